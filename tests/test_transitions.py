"""Every legal and illegal state transition, in the store's verbs and in the database's
own guard (the trigger refuses what the code would never try)."""

from __future__ import annotations

import itertools

import asyncpg
import pytest

from shared.core.status import TRANSITIONS, Status, is_legal

ALL = list(Status)


async def _job_in(db: asyncpg.Pool, status: Status) -> object:
    return await db.fetchval(
        "INSERT INTO jobs (job_type, payload, priority, status, max_retries, timeout_seconds) "
        "VALUES ('noop', '{}'::jsonb, 5, $1, 3, 10) RETURNING id", status.value)


async def test_database_table_matches_python_table(db):
    rows = await db.fetch("SELECT from_status, to_status FROM job_status_transitions")
    in_db = {(Status(r["from_status"]), Status(r["to_status"])) for r in rows}
    in_code = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert in_db == in_code


@pytest.mark.parametrize(("source", "target"),
                         [(a, b) for a, b in itertools.product(ALL, ALL) if a != b],
                         ids=lambda s: s.value)
async def test_store_transition_applies_only_legal_moves(store, db, source, target):
    job_id = await _job_in(db, source)
    row = await store.transition(job_id, target, reason="test")
    status = await db.fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
    if is_legal(source, target):
        assert row is not None and row["status"] == target
        assert status == target
        history = await store.history(job_id)
        assert (history[-1]["from_status"], history[-1]["to_status"]) == (source, target)
        assert history[-1]["reason"] == "test"
    else:
        assert row is None
        assert status == source
        assert len(await store.history(job_id)) == 1  # only the insert


@pytest.mark.parametrize(("source", "target"),
                         [(a, b) for a, b in itertools.product(ALL, ALL)
                          if a != b and not is_legal(a, b)], ids=lambda s: s.value)
async def test_database_refuses_illegal_moves_from_any_code_path(db, source, target):
    job_id = await _job_in(db, source)
    with pytest.raises(asyncpg.CheckViolationError, match="illegal job status transition"):
        await db.execute("UPDATE jobs SET status = $2 WHERE id = $1", job_id, target.value)
    assert await db.fetchval("SELECT status FROM jobs WHERE id = $1", job_id) == source


async def test_batch_with_one_illegal_move_changes_nothing(db):
    ok = await _job_in(db, Status.QUEUED)
    bad = await _job_in(db, Status.COMPLETED)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE jobs SET status = 'PROCESSING' WHERE id = ANY($1::uuid[])",
                         [ok, bad])
    rows = await db.fetch("SELECT id, status FROM jobs")
    assert {r["id"]: r["status"] for r in rows} == {ok: "QUEUED", bad: "COMPLETED"}


async def test_terminal_states_have_no_way_out_but_redrive():
    assert TRANSITIONS[Status.COMPLETED] == frozenset()
    assert TRANSITIONS[Status.CANCELLED] == frozenset()
    assert TRANSITIONS[Status.FAILED] == frozenset({Status.QUEUED})


async def test_history_trigger_joins_each_statement_by_its_own_rows(settings, db):
    """A connection whose first UPDATE of jobs touched no row (the worker's warm-up runs
    its claim and settle with empty arrays) must not keep a plan sized for empty transition
    tables: a nested loop there rescans the new rows once per old row, n x n for a batch
    (the drain at 100 lost a third of its rate to it: bench/RESULTS.md, issue 12 round
    four). Read from auto_explain's plans of the trigger's own statements."""
    await db.execute(
        "INSERT INTO jobs (job_type, payload, priority, status, max_retries, timeout_seconds) "
        "SELECT 'noop', '{}'::jsonb, 5, 'QUEUED', 3, 10 FROM generate_series(1, 200)")
    conn = await asyncpg.connect(settings.database_url,
                                 server_settings={"search_path": settings.db_schema})
    plans: list[str] = []
    try:
        await conn.execute("UPDATE jobs SET status = 'PROCESSING' WHERE false")  # no row
        try:
            await conn.execute("LOAD 'auto_explain'")
        except asyncpg.PostgresError as exc:
            pytest.skip(f"auto_explain cannot be loaded here: {exc}")
        await conn.execute("SET auto_explain.log_min_duration = 0; "
                           "SET auto_explain.log_analyze = on; "
                           "SET auto_explain.log_nested_statements = on; "
                           "SET client_min_messages = log")
        conn.add_log_listener(lambda _, message: plans.append(message.message))
        await conn.execute("UPDATE jobs SET status = 'PROCESSING', attempts = attempts + 1 "
                           "WHERE status = 'QUEUED'")
        await conn.execute("SET client_min_messages = notice")
    finally:
        await conn.close()
    joins = [p for p in plans if "old_rows" in p and "Named Tuplestore Scan" in p]
    assert len(joins) == 3, plans  # the check, the history, the counts
    for plan in joins:
        rescans = [line for line in plan.splitlines()
                   if "Named Tuplestore Scan" in line and "loops=1)" not in line]
        assert not rescans, plan
    assert await db.fetchval("SELECT count(*) FROM job_transitions") == 200
