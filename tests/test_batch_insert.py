"""A keyless batch inserted a chunk at a time (JobStore.insert_chunks), on the real stores.

Each chunk's INSERT runs while the producer makes the next chunk, all in one transaction:
the jobs are committed together when the producer is done, or none is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from shared.store.jobs import JobStore, NewJob


def _jobs(n: int, first: int = 0, priority: int = 5) -> list[NewJob]:
    return [NewJob(job_type="record", payload={"seconds": 0.0, "tag": str(first + i)},
                   priority=priority, max_retries=0, timeout_seconds=30.0)
            for i in range(n)]


async def _chunks(*chunks: Sequence[NewJob], then: Exception | None = None
                  ) -> AsyncIterator[Sequence[NewJob]]:
    for chunk in chunks:
        yield chunk
    if then is not None:
        raise then


async def test_chunks_are_committed_together_in_order(store: JobStore, db: asyncpg.Pool
                                                      ) -> None:
    rows = await store.insert_chunks(_chunks(_jobs(3), _jobs(1, 3), _jobs(2, 4)))
    assert [r["payload"]["tag"] for r in rows] == [str(i) for i in range(6)]
    stored = {r["id"]: r for r in await db.fetch("SELECT id, seq, payload, created_at FROM jobs")}
    assert [stored[r["id"]]["seq"] for r in rows] == [r["seq"] for r in rows]
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    assert all(stored[r["id"]]["payload"] == r["payload"] for r in rows)
    assert {r["created_at"] for r in stored.values()} == {rows[0]["created_at"]}


async def test_a_producer_that_fails_after_some_chunks_leaves_no_job(
        store: JobStore, db: asyncpg.Pool) -> None:
    with pytest.raises(ValueError, match="job 600 is invalid"):
        await store.insert_chunks(_chunks(_jobs(250), _jobs(250, 250),
                                          then=ValueError("job 600 is invalid")))
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0
    assert await db.fetchval("SELECT count(*) FROM job_count_deltas") == 0
    # The connection went back to the pool usable: the next batch goes in.
    assert len(await store.insert_chunks(_chunks(_jobs(2)))) == 2


async def test_a_chunk_the_database_refuses_rolls_back_the_chunks_before_it(
        store: JobStore, db: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await store.insert_chunks(_chunks(_jobs(250), _jobs(3, 250, priority=11), _jobs(5)))
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0
    assert len(await store.insert_chunks(_chunks(_jobs(2)))) == 2


async def test_no_chunk_is_no_job(store: JobStore) -> None:
    assert await store.insert_chunks(_chunks()) == []
