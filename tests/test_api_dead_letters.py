"""The dead letter queue over HTTP: jobs whose retries ran out, produced for real by a worker
running the ``broken`` type, then listed, redriven (they run again) and purged."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx

from tests.support.api_checks import assert_untouched, error_of, locs, mentions, redis_state
from tests.support.waits import eventually

JOBS = "/api/v1/jobs"
DEAD = "/api/v1/dead-letters"


async def create(api: httpx.AsyncClient, job_type: str, **fields: Any) -> str:
    resp = await api.post(JOBS, json={"job_type": job_type, **fields})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


async def all_reach(api: httpx.AsyncClient, ids: list[str], status: str) -> None:
    async def check() -> bool:
        jobs = [(await api.get(f"{JOBS}/{i}")).json() for i in ids]
        return all(j["status"] == status for j in jobs)

    await eventually(check, 20, interval=0.05, what=f"{len(ids)} jobs to be {status}")


async def runs(db: asyncpg.Pool, job_id: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM runs WHERE job_id = $1",
                                 uuid.UUID(job_id)))


async def dead_ids(api: httpx.AsyncClient, query: str = "") -> list[str]:
    resp = await api.get(f"{DEAD}{query}")
    assert resp.status_code == 200, resp.text
    items = resp.json()["items"]
    assert {j["status"] for j in items} <= {"FAILED"}
    return [j["id"] for j in items]


async def test_dead_jobs_are_listed_redriven_and_purged(api, db, namespace, start_worker):
    worker = await start_worker()
    a = await create(api, "broken", max_retries=1, payload={"tag": "a"})
    b = await create(api, "broken", max_retries=1, payload={"tag": "b"})
    f = await create(api, "flaky", payload={"fail_times": 1, "permanent": True})
    ok = await create(api, "noop")
    await all_reach(api, [a, b, f], "FAILED")
    await all_reach(api, [ok], "COMPLETED")
    assert (await runs(db, a), await runs(db, b), await runs(db, f)) == (2, 2, 1)

    # --- list: newest first, by type, in pages
    assert await dead_ids(api) == [f, b, a]
    assert await dead_ids(api, "?job_type=broken") == [b, a]
    assert await dead_ids(api, "?job_type=noop") == []
    first = (await api.get(DEAD, params={"limit": 2})).json()
    rest = (await api.get(DEAD, params={"limit": 2, "cursor": first["next_cursor"]})).json()
    assert [j["id"] for j in first["items"] + rest["items"]] == [f, b, a]
    assert rest["next_cursor"] is None
    dead_a = (await api.get(f"{JOBS}/{a}")).json()
    assert dead_a["last_error"] == "ValueError: boom" and dead_a["attempts"] == 2

    # --- redrive one: a fresh set of attempts, back in the ready queue, and it runs again
    await worker.stop()
    resp = await api.post(f"{DEAD}/{a}/redrive")
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert (job["status"], job["attempts"], job["last_error"]) == ("QUEUED", 0, None)
    assert mentions(await redis_state(namespace), a) == [
        f"{{{namespace}:default}}:ready:broken"]
    assert await dead_ids(api) == [f, b]
    error = error_of(await api.post(f"{DEAD}/{a}/redrive"), 409)  # not dead any more
    assert error["code"] == "conflict" and "QUEUED" in error["message"]
    error_of(await api.post(f"{DEAD}/{ok}/redrive"), 409)  # completed, never dead
    await start_worker()
    await all_reach(api, [a], "FAILED")
    assert await runs(db, a) == 4

    # --- redrive all of one type
    resp = await api.post(f"{DEAD}/redrive", json={"job_type": "broken"})
    assert resp.json() == {"count": 2}
    await all_reach(api, [a, b], "FAILED")
    assert (await runs(db, a), await runs(db, b), await runs(db, f)) == (6, 4, 1)

    # --- redrive everything (no body at all)
    resp = await api.post(f"{DEAD}/redrive")
    assert resp.json() == {"count": 3}
    await all_reach(api, [a, b, f], "FAILED")
    assert (await runs(db, a), await runs(db, b), await runs(db, f)) == (8, 6, 2)
    history = (await api.get(f"{JOBS}/{f}")).json()["history"]
    assert [(h["from_status"], h["to_status"]) for h in history].count(("FAILED", "QUEUED")) == 1

    # --- purge one type, then the rest; other jobs are untouched
    assert (await api.delete(DEAD, params={"job_type": "flaky"})).json() == {"count": 1}
    assert await dead_ids(api) == [b, a]
    error_of(await api.get(f"{JOBS}/{f}"), 404)
    assert (await api.delete(DEAD)).json() == {"count": 2}
    assert await dead_ids(api) == []
    assert (await api.delete(DEAD)).json() == {"count": 0}
    assert [j["id"] for j in (await api.get(JOBS)).json()["items"]] == [ok]


async def test_redrive_refusals(api, db, namespace):
    error = error_of(await api.post(f"{DEAD}/{uuid.uuid4()}/redrive"), 404)
    assert error["code"] == "not_found"
    assert locs(error_of(await api.post(f"{DEAD}/nope/redrive"), 422)) == [["path", "job_id"]]
    for body, loc in (([], ["body"]), ({"job_type": 3}, ["body", "job_type"]),
                      ({"job_type": "a\u0000"}, ["body", "job_type"]),
                      ({"jobtype": "x"}, ["body", "jobtype"])):
        error = error_of(await api.post(f"{DEAD}/redrive", json=body), 422)
        assert locs(error)[0] == loc
    assert (await api.post(f"{DEAD}/redrive", json={})).json() == {"count": 0}
    error = error_of(await api.get(DEAD, params={"cursor": "bad"}), 422)
    assert locs(error) == [["query", "cursor"]]
    assert locs(error_of(await api.get(DEAD, params={"limit": 501}), 422)) == [
        ["query", "limit"]]
    await assert_untouched(db, namespace)
