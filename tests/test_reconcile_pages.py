"""The reconcile pass pages through the jobs Redis should hold, one status at a time, and a
page reads its own rows from the ``(status, seq)`` index however many finished jobs the
table holds (retention keeps days of them)."""

from __future__ import annotations

import json
from typing import Any

from shared.core.status import Status
from shared.store.jobs import ACTIVE, ACTIVE_PAGE_SQL

FINISHED = 20_000


async def _fill(db, active: int) -> dict[Status, list[int]]:
    """Finished jobs first (the old history a walk in seq order would read through), then
    active jobs of every status interleaved, then more finished ones."""
    insert = """
        INSERT INTO jobs (job_type, payload, priority, status, max_retries, timeout_seconds,
                          finished_at)
        SELECT 'noop', '{}', 5, s, 3, 30, CASE WHEN s = 'COMPLETED' THEN now() END
        FROM generate_series(1, $1) i, LATERAL (SELECT ($2::text[])[1 + i % cardinality($2)]) t(s)
        RETURNING seq, status"""
    await db.execute(insert, FINISHED, ["COMPLETED"])
    rows = await db.fetch(insert, active, ["QUEUED", "RETRYING", "PROCESSING", "FAILED"])
    await db.execute(insert, 1_000, ["COMPLETED"])
    await db.execute("ANALYZE jobs")
    active: dict[Status, list[int]] = {s: [] for s in ACTIVE}
    for r in rows:
        if Status(r["status"]) in active:
            active[Status(r["status"])].append(r["seq"])
    return active


async def test_pages_walk_every_active_job_once_and_no_other(store, db):
    expected = await _fill(db, 30)
    for status in ACTIVE:
        seen: list[int] = []
        after = 0
        while rows := await store.active_page(status, after, 3):
            assert all(r["status"] == status for r in rows)
            seen += [r["seq"] for r in rows]
            after = rows[-1]["seq"]
        assert seen == sorted(expected[status]), status


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in _nodes(child))]


async def test_a_page_reads_the_status_index_whatever_plan_is_cached(db):
    # Thousands active: enough that the old query's planner walked the seq index.
    await _fill(db, 6_000)
    async with db.acquire() as conn:
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            for status in ACTIVE:
                await conn.execute(f"PREPARE page (bigint, int) AS {ACTIVE_PAGE_SQL[status]}")
                try:
                    found = await conn.fetchval(
                        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE page (0, 100)")
                finally:
                    await conn.execute("DEALLOCATE page")
                doc = json.loads(found) if isinstance(found, str) else found  # pool's codec
                plan = doc[0]["Plan"]
                scans = [n for n in _nodes(plan) if "Index Name" in n]
                assert [n["Index Name"] for n in scans] == ["jobs_status_seq"], (mode, plan)
                # Its own 100 rows, not the 20,000 finished ones before them.
                assert sum(n.get("Rows Removed by Filter", 0) for n in _nodes(plan)) == 0
                assert plan["Shared Hit Blocks"] + plan["Shared Read Blocks"] < 60, plan
        await conn.execute("RESET plan_cache_mode")
