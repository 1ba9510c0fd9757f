"""POST /api/v1/jobs: create one job, validate everything first, never a 500 for bad input.

Every refusal is checked twice: the response (status, the single error shape, the path of
the bad field) and the stores (no row in PostgreSQL, no key in Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from shared.queue.redis_queue import SCALE
from shared.settings import Settings
from shared.store.jobs import new_ids
from tests.conftest import admin_headers
from tests.support.api_checks import (
    RedisMonitor,
    assert_untouched,
    closed_port,
    error_of,
    job_count,
    locs,
    redis_state,
)
from tests.support.waits import eventually

JOBS = "/api/v1/jobs"
JSON = {"content-type": "application/json"}
LIMIT = 256 * 1024


# --- the happy path -----------------------------------------------------------------------


async def test_create_returns_201_with_the_job_and_its_location(api, db, namespace):
    resp = await api.post(JOBS, json={"job_type": "noop", "payload": {"tag": "a"}})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["job_type"] == "noop"
    assert job["payload"] == {"tag": "a"}
    assert job["priority"] == 5  # the default
    assert job["status"] == "QUEUED"
    assert job["attempts"] == 0
    assert job["max_retries"] == 3 and job["timeout_seconds"] == 300.0  # settings defaults
    assert resp.headers["location"] == f"{JOBS}/{job['id']}"
    assert "idempotent-replayed" not in resp.headers

    got = await api.get(resp.headers["location"])
    assert got.status_code == 200
    assert {k: v for k, v in got.json().items() if k != "history"} == job

    row = await db.fetchrow("SELECT * FROM jobs WHERE id = $1", job["id"])
    assert row["status"] == "QUEUED" and row["payload"] == {"tag": "a"}
    ready = (await redis_state(namespace))[f"{{{namespace}:default}}:ready:noop"]
    assert ready == [(job["id"], float(5 * SCALE + row["seq"]))]


async def test_create_takes_priority_retries_and_timeout_from_the_request(api, db):
    resp = await api.post(JOBS, json={"job_type": "noop", "priority": 1, "max_retries": 7,
                                      "timeout_seconds": 12.5})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert (job["priority"], job["max_retries"], job["timeout_seconds"]) == (1, 7, 12.5)
    row = await db.fetchrow("SELECT priority, max_retries, timeout_seconds FROM jobs")
    assert tuple(row) == (1, 7, 12.5)


async def test_job_type_defaults_apply_when_the_request_leaves_them_out(api):
    # ``record`` registers max_retries=5; ``broken`` max_retries=2.
    a = (await api.post(JOBS, json={"job_type": "record"})).json()
    b = (await api.post(JOBS, json={"job_type": "broken"})).json()
    assert (a["max_retries"], b["max_retries"]) == (5, 2)


# --- refusals ---------------------------------------------------------------------------------


async def test_unknown_job_type_is_422_naming_the_known_types(api, db, namespace, registry):
    error = error_of(await api.post(JOBS, json={"job_type": "nope"}), 422)
    assert error["code"] == "validation_error"
    assert locs(error) == [["body", "job_type"]]
    for name in registry.names():
        assert name in error["message"]
    await assert_untouched(db, namespace)


def raw(body: bytes, content_type: str | None = "application/json") -> dict[str, Any]:
    return {"content": body, "headers": {"content-type": content_type} if content_type else {}}


BAD_INPUT: list[tuple[str, dict[str, Any], int, list[Any] | None]] = [
    # (case, request, status, location of the first error: None means "not checked")
    ("priority 0", {"json": {"job_type": "noop", "priority": 0}}, 422, ["body", "priority"]),
    ("priority 11", {"json": {"job_type": "noop", "priority": 11}}, 422, ["body", "priority"]),
    ("priority huge", {"json": {"job_type": "noop", "priority": 10**40}}, 422,
     ["body", "priority"]),
    ("priority negative huge", {"json": {"job_type": "noop", "priority": -(10**40)}}, 422,
     ["body", "priority"]),
    ("priority true", {"json": {"job_type": "noop", "priority": True}}, 422,
     ["body", "priority"]),
    ("priority string", {"json": {"job_type": "noop", "priority": "5"}}, 422,
     ["body", "priority"]),
    ("payload list", {"json": {"job_type": "noop", "payload": [1, 2]}}, 422,
     ["body", "payload"]),
    ("payload string", {"json": {"job_type": "noop", "payload": "x"}}, 422,
     ["body", "payload"]),
    ("payload null", {"json": {"job_type": "noop", "payload": None}}, 422,
     ["body", "payload"]),
    ("scheduled_at naive", {"json": {"job_type": "noop",
                                     "scheduled_at": "2030-01-01T00:00:00"}}, 422,
     ["body", "scheduled_at"]),
    ("scheduled_at garbage", {"json": {"job_type": "noop", "scheduled_at": "tomorrow"}}, 422,
     ["body", "scheduled_at"]),
    ("scheduled_at before year 1 in UTC",
     {"json": {"job_type": "noop", "scheduled_at": "0001-01-01T00:00:00+14:00"}}, 422,
     ["body", "scheduled_at"]),
    ("extra field", {"json": {"job_type": "noop", "colour": "red"}}, 422, ["body", "colour"]),
    ("job_type missing", {"json": {"payload": {}}}, 422, ["body", "job_type"]),
    ("job_type empty", {"json": {"job_type": ""}}, 422, ["body", "job_type"]),
    ("max_retries negative", {"json": {"job_type": "noop", "max_retries": -1}}, 422,
     ["body", "max_retries"]),
    ("max_retries huge", {"json": {"job_type": "noop", "max_retries": 10**20}}, 422,
     ["body", "max_retries"]),
    ("timeout zero", {"json": {"job_type": "noop", "timeout_seconds": 0}}, 422,
     ["body", "timeout_seconds"]),
    ("timeout NaN", raw(b'{"job_type":"noop","timeout_seconds":NaN}'), 422,
     ["body", "timeout_seconds"]),
    ("timeout Infinity", raw(b'{"job_type":"noop","timeout_seconds":Infinity}'), 422,
     ["body", "timeout_seconds"]),
    ("timeout -Infinity", raw(b'{"job_type":"noop","timeout_seconds":-Infinity}'), 422,
     ["body", "timeout_seconds"]),
    ("malformed JSON", raw(b'{"job_type": "noop", '), 422, None),
    ("JSON array body", {"json": [{"job_type": "noop"}]}, 422, ["body"]),
    ("JSON string body", {"json": "noop"}, 422, ["body"]),
    ("wrong content type", raw(b'{"job_type":"noop"}', "text/plain"), 415,
     ["header", "Content-Type"]),
    ("form content type", raw(b"job_type=noop", "application/x-www-form-urlencoded"), 415,
     ["header", "Content-Type"]),
    ("empty body", raw(b""), 422, ["body"]),
    ("email: bad address", {"json": {"job_type": "email", "payload": {
        "to": "not-an-address", "subject": "s", "body": "b"}}}, 422, ["body", "payload", "to"]),
    ("email: bad address in a list", {"json": {"job_type": "email", "payload": {
        "to": ["a@example.com", "nope"], "subject": "s", "body": "b"}}}, 422,
     ["body", "payload", "to", 1]),
    ("email: subject missing", {"json": {"job_type": "email", "payload": {
        "to": "a@example.com", "body": "b"}}}, 422, ["body", "payload", "subject"]),
    ("record: seconds not a number", {"json": {"job_type": "record",
                                               "payload": {"seconds": "soon"}}}, 422,
     ["body", "payload", "seconds"]),
    ("record: NaN literal in payload", raw(b'{"job_type":"record","payload":{"seconds":NaN}}'),
     422, ["body", "payload", "seconds"]),
    ("record: 'nan' string coerced to a float", {"json": {"job_type": "record",
                                                          "payload": {"seconds": "nan"}}},
     422, ["body", "payload", "seconds"]),
    ("NUL character in a payload string", {"json": {"job_type": "noop",
                                                    "payload": {"tag": "a\u0000b"}}}, 422,
     ["body", "payload", "tag"]),
    ("unpaired surrogate in a payload string",
     raw(b'{"job_type":"noop","payload":{"tag":"\\ud800"}}'), 422, ["body", "payload", "tag"]),
    ("NUL in the Idempotency-Key", {"json": {"job_type": "noop"},
                                    "headers": {"Idempotency-Key": "a\x00b"}}, 422,
     ["header", "Idempotency-Key"]),
    ("Idempotency-Key too long", {"json": {"job_type": "noop"},
                                  "headers": {"Idempotency-Key": "k" * 256}}, 422,
     ["header", "Idempotency-Key"]),
    # The JSON parser itself gives up: FastAPI answers 400, in our error shape.
    ("integer with 5,000 digits", raw(b'{"job_type":"noop","payload":{"n":'
                                      + b"1" * 5000 + b"}}"), 400, None),
    ("nesting 5,000 deep", raw(b'{"job_type":"noop","payload":{"n":'
                               + b"[" * 5000 + b"]" * 5000 + b"}}"), 400, None),
    ("invalid UTF-8", raw(b'{"job_type":"noop","payload":{"tag":"\xff"}}'), 400, None),
]


@pytest.mark.parametrize(("request_kw", "status", "loc"),
                         [pytest.param(kw, status, loc, id=case)
                          for case, kw, status, loc in BAD_INPUT])
async def test_bad_input_is_refused_and_changes_nothing(api, db, namespace, request_kw,
                                                        status, loc):
    error = error_of(await api.post(JOBS, **request_kw), status)
    if loc is not None:
        assert locs(error)[0] == loc, error
    if status == 422:
        assert error["code"] == "validation_error"
    await assert_untouched(db, namespace)


async def test_malformed_json_is_422_json_invalid(api):
    error = error_of(await api.post(JOBS, **raw(b'{"job_type": ')), 422)
    assert error["details"][0]["type"] == "json_invalid"
    assert error["details"][0]["loc"][0] == "body"


# --- size limits ------------------------------------------------------------------------------


def big_job(payload_bytes: int) -> bytes:
    return json.dumps({"job_type": "noop", "payload": {"tag": "x" * payload_bytes}}).encode()


async def test_body_over_256_kib_is_413_with_content_length(api, db, namespace):
    body = big_job(LIMIT)
    resp = await api.post(JOBS, content=body, headers=JSON)
    assert resp.request.headers["content-length"] == str(len(body))
    error = error_of(resp, 413)
    assert error["code"] == "payload_too_large"
    await assert_untouched(db, namespace)


async def test_body_over_256_kib_is_413_without_content_length(api, db, namespace):
    body = big_job(LIMIT)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 16 * 1024):
            yield body[i:i + 16 * 1024]

    resp = await api.post(JOBS, content=chunks(), headers=JSON)
    assert "content-length" not in resp.request.headers
    assert error_of(resp, 413)["code"] == "payload_too_large"
    await assert_untouched(db, namespace)


async def test_a_job_just_under_the_limit_is_accepted(api, db):
    resp = await api.post(JOBS, content=big_job(LIMIT - 1024), headers=JSON)
    assert resp.status_code == 201, resp.text[:300]
    assert await job_count(db) == 1


async def test_batch_with_one_payload_over_the_limit_is_413_naming_it(api, db, namespace):
    jobs = [{"job_type": "noop"}, {"job_type": "noop", "payload": {"tag": "x" * LIMIT}}]
    error = error_of(await api.post(f"{JOBS}/batch", json={"jobs": jobs}), 413)
    assert error["code"] == "payload_too_large"
    assert locs(error) == [["body", "jobs", 1, "payload"]]
    await assert_untouched(db, namespace)


# --- Idempotency-Key ----------------------------------------------------------------------------


async def test_repeated_idempotency_key_returns_the_original_job(api, db, namespace):
    spec = {"job_type": "noop", "payload": {"tag": "once"}}
    first = await api.post(JOBS, json=spec, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201
    before = await redis_state(namespace)

    again = await api.post(JOBS, json=spec, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert again.json() == first.json()
    await assert_untouched(db, namespace, rows=1, redis_before=before)


async def test_same_key_with_another_body_is_409_and_never_a_second_job(api, db, namespace):
    headers = {"Idempotency-Key": "k-2#0"}
    first = await api.post(JOBS, json={"job_type": "noop", "payload": {"tag": "a"}},
                           headers=headers)
    assert first.status_code == 201
    before = await redis_state(namespace)
    for other in ({"job_type": "noop", "payload": {"tag": "b"}},
                  {"job_type": "noop", "payload": {"tag": "a"}, "priority": 2},
                  {"job_type": "record"}):
        error = error_of(await api.post(JOBS, json=other, headers=headers), 409)
        assert error["code"] == "idempotency_conflict"
        assert locs(error) == [["header", "Idempotency-Key"]]
    # One namespace for /jobs and /jobs/batch: the same key on the batch endpoint, even with
    # the same job in it, is another request, not a replay and not a second job.
    error = error_of(await api.post(f"{JOBS}/batch", json={"jobs": [
        {"job_type": "noop", "payload": {"tag": "a"}}]}, headers=headers), 409)
    assert error["code"] == "idempotency_conflict"
    await assert_untouched(db, namespace, rows=1, redis_before=before)


async def test_concurrent_requests_with_one_key_make_one_job(api, db):
    spec = {"job_type": "noop", "payload": {"tag": "race"}}
    resps = await asyncio.gather(*(api.post(JOBS, json=spec, headers={"Idempotency-Key": "k-3"})
                                   for _ in range(5)))
    assert sorted(r.status_code for r in resps) == [200, 200, 200, 200, 201]
    assert len({r.json()["id"] for r in resps}) == 1
    assert await job_count(db) == 1


async def test_without_a_key_each_request_is_a_new_job(api, db):
    for _ in range(2):
        assert (await api.post(JOBS, json={"job_type": "noop"})).status_code == 201
    assert await job_count(db) == 2


# --- scheduled_at -------------------------------------------------------------------------------


async def test_scheduled_at_in_the_past_runs_now(api, namespace, start_worker):
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    job = (await api.post(JOBS, json={"job_type": "noop", "scheduled_at": past})).json()
    assert job["status"] == "QUEUED"
    state = await redis_state(namespace)
    assert [m for m, _ in state[f"{{{namespace}:default}}:ready:noop"]] == [job["id"]]
    assert f"{{{namespace}:default}}:delayed" not in state
    await start_worker()

    async def completed() -> bool:
        return bool((await api.get(f"{JOBS}/{job['id']}")).json()["status"] == "COMPLETED")

    await eventually(completed, timeout=15, what="the past-due job to complete")


async def test_scheduled_within_the_lookahead_is_queued_in_the_delayed_set(
        api, namespace, settings: Settings):
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(
        seconds=settings.schedule_lookahead_seconds / 2)
    # Any offset is accepted and stored as the same instant.
    local = due.astimezone(datetime.now().astimezone().tzinfo).isoformat()
    job = (await api.post(JOBS, json={"job_type": "noop", "scheduled_at": local})).json()
    assert job["status"] == "QUEUED"
    assert datetime.fromisoformat(job["scheduled_at"]) == due
    assert datetime.fromisoformat(job["next_attempt_at"]) == due
    state = await redis_state(namespace)
    assert state[f"{{{namespace}:default}}:delayed"] == [(job["id"], due.timestamp() * 1000)]
    assert f"{{{namespace}:default}}:ready:noop" not in state


async def test_scheduled_beyond_the_lookahead_is_pending_and_not_in_redis(
        api, db, namespace, settings: Settings):
    due = datetime.now(UTC) + timedelta(seconds=settings.schedule_lookahead_seconds + 3600)
    job = (await api.post(JOBS, json={"job_type": "noop",
                                      "scheduled_at": due.isoformat()})).json()
    assert job["status"] == "PENDING"
    assert await db.fetchval("SELECT status FROM jobs WHERE id = $1", job["id"]) == "PENDING"
    assert await redis_state(namespace) == {}


# --- batch ---------------------------------------------------------------------------------------

BATCH = f"{JOBS}/batch"


async def test_batch_creates_every_job_in_request_order(api, db, namespace):
    jobs = [{"job_type": "noop", "payload": {"tag": str(i)}, "priority": 1 + i % 10}
            for i in range(25)]
    resp = await api.post(BATCH, json={"jobs": jobs})
    assert resp.status_code == 201, resp.text
    out = resp.json()["jobs"]
    assert [j["payload"]["tag"] for j in out] == [str(i) for i in range(25)]
    assert [j["priority"] for j in out] == [1 + i % 10 for i in range(25)]
    assert {j["status"] for j in out} == {"QUEUED"}
    assert await job_count(db) == 25
    ready = (await redis_state(namespace))[f"{{{namespace}:default}}:ready:noop"]
    assert {m for m, _ in ready} == {j["id"] for j in out}
    # What is stored is what was answered: each job its own payload (the batch sends the
    # payloads as one array that each row takes its element of) and creation time.
    stored = {str(r["id"]): r for r in await db.fetch(
        "SELECT id, seq, payload, priority, created_at FROM jobs")}
    for j in out:
        row = stored[j["id"]]
        assert (row["payload"], row["priority"]) == (j["payload"], j["priority"])
        assert row["created_at"] == datetime.fromisoformat(j["created_at"])


def test_job_ids_are_random_version_4_with_distinct_beginnings():
    """Version 4 ids, none alike, and their first characters (what the console shows and
    an id-prefix search reads) differ between ids made together."""
    ids = [*new_ids(1_000), *new_ids(1)]
    assert all(u.version == 4 and u.variant == uuid.RFC_4122 for u in ids)
    assert len(set(ids)) == 1_001
    assert len({str(u)[:8] for u in ids}) > 990
    assert all(isinstance(u, uuid.UUID) and uuid.UUID(str(u)) == u for u in ids)


@pytest.mark.parametrize(("bad", "loc"), [
    ({"job_type": "nope"}, ["body", "jobs", 2, "job_type"]),
    ({"job_type": "noop", "priority": 0}, ["body", "jobs", 2, "priority"]),
    ({"job_type": "email", "payload": {"to": "x", "subject": "s", "body": "b"}},
     ["body", "jobs", 2, "payload", "to"]),
    ({"job_type": "noop", "payload": {"tag": "\u0000"}}, ["body", "jobs", 2, "payload", "tag"]),
    ({"job_type": "noop", "scheduled_at": "2030-01-01T00:00:00"},
     ["body", "jobs", 2, "scheduled_at"]),
])
async def test_one_bad_job_refuses_the_whole_batch(api, db, namespace, bad, loc):
    jobs = [{"job_type": "noop"}, {"job_type": "record"}, bad, {"job_type": "noop"}]
    error = error_of(await api.post(BATCH, json={"jobs": jobs}), 422)
    assert locs(error)[0] == loc
    await assert_untouched(db, namespace)


@pytest.mark.parametrize(("bad", "where"), [
    ({"job_type": "nope"}, ["job_type"]),
    ({"job_type": "email", "payload": {"to": "x", "subject": "s", "body": "b"}},
     ["payload", "to"]),
    ({"job_type": "noop", "payload": {"tag": "\u0000"}}, ["payload", "tag"]),
])
async def test_a_bad_job_late_in_a_large_batch_rolls_back_the_chunks_before_it(
        api, db, namespace, bad, where):
    """A keyless batch is inserted a chunk at a time while later jobs are still being
    validated: a bad job in the last chunk must leave no row of the earlier chunks (their
    INSERTs ran, uncommitted) and nothing in Redis."""
    jobs: list[dict[str, Any]] = [{"job_type": "noop", "payload": {"tag": str(i)}}
                                  for i in range(1000)]
    jobs[998] = bad
    error = error_of(await api.post(BATCH, json={"jobs": jobs}), 422)
    assert locs(error)[0] == ["body", "jobs", 998, *where]
    await assert_untouched(db, namespace)
    assert await db.fetchval("SELECT count(*) FROM job_count_deltas") == 0


async def test_a_large_batch_is_stored_in_request_order_with_its_own_payloads(api, db,
                                                                            namespace):
    """1,000 jobs (four chunks): each answered job is the row stored under its id, in the
    request's order and seq order, all pushed; one creation time (one transaction)."""
    jobs = [{"job_type": "noop", "payload": {"tag": str(i)}, "priority": 1 + i % 10}
            for i in range(1000)]
    resp = await api.post(BATCH, json={"jobs": jobs})
    assert resp.status_code == 201, resp.text[:300]
    out = resp.json()["jobs"]
    assert [j["payload"]["tag"] for j in out] == [str(i) for i in range(1000)]
    stored = {str(r["id"]): r for r in await db.fetch(
        "SELECT id, seq, payload, priority, created_at FROM jobs")}
    assert len(stored) == 1000
    for j in out:
        row = stored[j["id"]]
        assert (row["payload"], row["priority"]) == (j["payload"], j["priority"])
        assert row["created_at"] == datetime.fromisoformat(j["created_at"])
    seqs = [stored[j["id"]]["seq"] for j in out]  # FIFO within the batch: its ready order
    assert seqs == sorted(seqs)
    assert len({r["created_at"] for r in stored.values()}) == 1
    ready = (await redis_state(namespace))[f"{{{namespace}:default}}:ready:noop"]
    assert {m for m, _ in ready} == set(stored)


async def test_batch_of_1001_jobs_is_422(api, db, namespace):
    error = error_of(await api.post(BATCH, json={"jobs": [{"job_type": "noop"}] * 1001}), 422)
    assert locs(error) == [["body", "jobs"]]
    assert "1000" in error["message"]
    await assert_untouched(db, namespace)


async def test_empty_batch_and_malformed_batches_are_422(api, db, namespace):
    for body in ({"jobs": []}, {"jobs": {}}, {}, [], {"jobs": [{"job_type": "noop"}], "x": 1}):
        error_of(await api.post(BATCH, json=body), 422)
    await assert_untouched(db, namespace)


async def test_batch_of_1000_is_one_transaction_and_one_redis_command(settings: Settings, db,
                                                                      namespace):
    """Counted at the source: asyncpg's query logger on the app's only connection, and
    Redis MONITOR filtered to the app's own client connection. A keyless batch is inserted
    in steps of at most 250 jobs (each INSERT runs while the next jobs are validated), all
    in one transaction: one commit."""
    from functions.api.app import create_app

    app = create_app(settings.model_copy(update={"db_pool_max": 1, "db_pool_min": 1}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                                 headers=await admin_headers(settings)) as client:
        # Warm up: open the pool and the Redis connection, load the push script, and let
        # asyncpg learn the batch statement's array types (a single create has its own
        # one-row statement).
        assert (await client.post(JOBS, json={"job_type": "noop"})).status_code == 201
        warm = {"jobs": [{"job_type": "noop"}, {"job_type": "noop"}]}
        assert (await client.post(BATCH, json=warm)).status_code == 201
        statements: list[str] = []
        pool = await app.state.stores.pool()
        async with pool.acquire() as conn:
            reset_query = conn.get_reset_query()
            conn.add_query_logger(lambda q: statements.append(q.query))

        jobs = [{"job_type": "noop", "payload": {"tag": str(i)}} for i in range(1000)]
        async with RedisMonitor() as commands:
            resp = await client.post(BATCH, json={"jobs": jobs})
        assert resp.status_code == 201, resp.text[:300]
        await app.state.stores.close()

    ours = [q for q in statements if q != reset_query]  # the pool's own reset on release
    assert len(ours) >= 5, ours  # BEGIN, at least 1,000 / 250 INSERTs, COMMIT
    assert ours[0] == "BEGIN;" and ours[-1] == "COMMIT;", ours
    assert all(q.lstrip().startswith("WITH made AS (\n    INSERT INTO jobs") for q in ours[1:-1])
    mine = {(c["client_address"], c["client_port"]) for c in commands
            if namespace in c["command"] and c["client_type"] != "lua"}
    assert len(mine) == 1
    sent = [c["command"].split()[0].upper() for c in commands
            if (c["client_address"], c["client_port"]) in mine]
    assert sent == ["EVALSHA"]
    assert await job_count(db) == 1003
    state = await redis_state(namespace)
    assert len(state[f"{{{namespace}:default}}:ready:noop"]) == 1003


async def test_a_create_is_one_statement_and_one_redis_command(settings: Settings, db,
                                                              namespace):
    """One create, one round trip to each store: a single INSERT in its own implicit
    transaction (no BEGIN/COMMIT around it), then the push script."""
    from functions.api.app import create_app

    app = create_app(settings.model_copy(update={"db_pool_max": 1, "db_pool_min": 1}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                                 headers=await admin_headers(settings)) as client:
        assert (await client.post(JOBS, json={"job_type": "noop"})).status_code == 201
        statements: list[str] = []
        pool = await app.state.stores.pool()
        async with pool.acquire() as conn:
            reset_query = conn.get_reset_query()
            conn.add_query_logger(lambda q: statements.append(q.query))
        async with RedisMonitor() as commands:
            resp = await client.post(JOBS, json={"job_type": "noop", "payload": {"n": 1}})
        assert resp.status_code == 201, resp.text[:300]
        await app.state.stores.close()

    ours = [q for q in statements if q != reset_query]
    assert len(ours) == 1, ours
    assert ours[0].lstrip().startswith("INSERT INTO jobs")
    mine = {(c["client_address"], c["client_port"]) for c in commands
            if namespace in c["command"] and c["client_type"] != "lua"}
    sent = [c["command"].split()[0].upper() for c in commands
            if (c["client_address"], c["client_port"]) in mine]
    assert sent == ["EVALSHA"]
    assert await job_count(db) == 2
    state = await redis_state(namespace)
    assert resp.json()["id"] in dict(state[f"{{{namespace}:default}}:ready:noop"])


async def test_batch_replay_returns_the_same_jobs_and_a_changed_batch_is_409(api, db,
                                                                            namespace):
    jobs = [{"job_type": "noop", "payload": {"tag": str(i)}} for i in range(3)]
    headers = {"Idempotency-Key": "batch-1"}
    first = await api.post(BATCH, json={"jobs": jobs}, headers=headers)
    assert first.status_code == 201
    before = await redis_state(namespace)

    again = await api.post(BATCH, json={"jobs": jobs}, headers=headers)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()

    for changed in (jobs[:2], [*jobs, {"job_type": "noop"}], [jobs[0], jobs[2], jobs[1]]):
        error = error_of(await api.post(BATCH, json={"jobs": changed}, headers=headers), 409)
        assert error["code"] == "idempotency_conflict"
    await assert_untouched(db, namespace, rows=3, redis_before=before)


# --- a store is down -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def client_for(settings: Settings, headers: dict[str, str]
                     ) -> AsyncIterator[httpx.AsyncClient]:
    from functions.api.app import create_app

    app = create_app(settings)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api", headers=headers) as client:
            yield client
    finally:
        await app.state.stores.close()


async def test_create_while_redis_is_down_keeps_the_job_pending(settings: Settings, db,
                                                                namespace):
    """The row is committed first; the failed push leaves it PENDING for the scheduler's
    sweep, and the client still gets its job."""
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed_port()}/0"})
    async with client_for(down, await admin_headers(settings)) as client:
        resp = await client.post(JOBS, json={"job_type": "noop"})
        assert resp.status_code == 201, resp.text
        job = resp.json()
        assert job["status"] == "PENDING"
        assert job["status_reason"] == "redis unavailable at enqueue"
        assert (await client.get(f"{JOBS}/{job['id']}")).json()["status"] == "PENDING"
        error = error_of(await client.get(f"{JOBS}/stats"), 503)  # queue depth needs Redis
        assert error["code"] == "unavailable" and locs(error) == [["redis"]]
    assert await db.fetchval("SELECT status FROM jobs") == "PENDING"
    assert await redis_state(namespace) == {}


async def test_create_while_postgres_is_down_is_503_and_pushes_nothing(settings: Settings,
                                                                       namespace):
    down = settings.model_copy(update={
        "database_url": f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"})
    # The key is in the real database; the app cannot reach it, so it cannot check the
    # key either: that too is a 503, not a 401.
    async with client_for(down, await admin_headers(settings)) as client:
        resp = await client.post(JOBS, json={"job_type": "noop"})
        error = error_of(resp, 503)
        assert error["code"] == "unavailable" and locs(error) == [["store"]]
        assert resp.headers["retry-after"] == "1"
    assert await redis_state(namespace) == {}
