"""GET /workers: the workers alive with the jobs they run (their presence records, renewed
by each heartbeat), and the rate and concurrency limits in force."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from shared.queue.presence import workers_alive
from shared.registry import JobContext, JobType
from tests.support.api_checks import create, error_of
from tests.support.registry_scope import scoped_registrations
from tests.support.waits import eventually

WORKERS = "/api/v1/workers"
GATE = asyncio.Event()  # the "held" jobs run until the test opens it


class Held(BaseModel):
    tag: str | None = None


async def held(payload: Held, ctx: JobContext) -> None:
    """Run until the test lets go: a job that stays running as long as it needs."""
    await GATE.wait()


@pytest.fixture(autouse=True)
def held_type() -> Iterator[None]:
    GATE.clear()
    with scoped_registrations() as registry:
        registry.add(JobType("held", Held, held, concurrency_limit=2,
                             rate_limit=(100, 60.0)))
        yield
    GATE.set()


async def listing(api: Any) -> dict[str, Any]:
    resp = await api.get(WORKERS)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_a_running_worker_is_listed_with_its_job_and_vanishes_after_sigkill(
        api, spawn):
    job = await create(api, "record", payload={"seconds": 60})
    # lease 1.5 s: a heartbeat every 0.5 s, a presence record that lives 1.5 s
    proc = await spawn("-m", "worker", worker_id="seen-1", lease_seconds=1.5,
                       worker_concurrency=3)

    async def running_it() -> dict[str, Any] | None:
        for w in (await listing(api))["workers"]:
            if w["worker_id"] == "seen-1" and [r["id"] for r in w["running"]] == [job["id"]]:
                return dict(w)
        return None

    seen = await eventually(running_it, timeout=20, interval=0.1,
                            what="the worker listed with its job")
    assert seen["pid"] == proc.pid and seen["queue"] == "default"
    assert seen["concurrency"] == 3 and seen["running_count"] == 1
    assert {"record", "noop"} <= set(seen["job_types"])
    assert seen["running"][0]["job_type"] == "record"
    assert seen["ttl_seconds"] == 1.5
    assert seen["started_at"] <= seen["running"][0]["started_at"] <= seen["last_seen"]

    proc.kill()  # no drain, no goodbye: the record just stops being renewed
    await proc.wait()
    killed = time.monotonic()

    async def gone() -> bool:
        return not (await listing(api))["workers"]

    await eventually(gone, timeout=10, interval=0.1, what="the killed worker to vanish")
    # The record expires at most one TTL after the last beat, which came before the kill
    # (generous slack for a loaded machine).
    assert time.monotonic() - killed < 1.5 + 3.0


async def test_a_worker_that_stops_cleanly_leaves_at_once(api, start_worker, settings,
                                                          stores):
    handle = await start_worker(worker_id="clean-1")

    async def listed() -> bool:
        return [w["worker_id"] for w in (await listing(api))["workers"]] == ["clean-1"]

    await eventually(listed, what="the worker listed")
    await handle.stop()
    assert (await listing(api))["workers"] == []
    assert await workers_alive(stores.redis, settings.redis_prefix) == []


async def test_limits_show_what_each_limited_type_uses_now(api, start_worker):
    await start_worker(worker_concurrency=5)
    ids = [(await create(api, "held", payload={"tag": str(i)}))["id"] for i in range(3)]

    def held_limit(body: dict[str, Any]) -> dict[str, Any]:
        return next(lim for lim in body["limits"] if lim["job_type"] == "held")

    async def two_running() -> dict[str, Any] | None:
        lim = held_limit(await listing(api))
        return lim if lim["running"] == 2 else None

    lim = await eventually(two_running, what="2 held jobs running (the concurrency limit)")
    assert lim == {"job_type": "held", "queue": "default", "concurrency_limit": 2,
                   "running": 2, "rate_limit": 100, "rate_per_seconds": 60.0,
                   "started_in_window": 2}
    body = await listing(api)
    # Every limited type is listed, the seed types' too; an unlimited one is not.
    names = [x["job_type"] for x in body["limits"]]
    assert names == sorted(names) and "report_generation" in names and "noop" not in names
    email = next(x for x in body["limits"] if x["job_type"] == "email")
    assert email["concurrency_limit"] is None and email["running"] is None
    assert email["started_in_window"] == 0

    GATE.set()

    async def all_started_and_done() -> bool:
        lim = held_limit(await listing(api))
        return lim["running"] == 0 and lim["started_in_window"] == 3

    await eventually(all_started_and_done, what="the 3 held jobs started and finished")
    for job_id in ids:
        async def completed(job_id: str = job_id) -> bool:
            return (await api.get(f"/api/v1/jobs/{job_id}")).json()["status"] == "COMPLETED"
        await eventually(completed, what="held job completed")


async def test_a_namespace_bound_key_sees_workers_but_not_which_jobs_they_run(
        api, api_as, start_worker):
    job = await create(api, "held")
    await start_worker(worker_id="shared-1")

    async def busy() -> bool:
        workers = (await listing(api))["workers"]
        return bool(workers) and workers[0]["running_count"] == 1

    await eventually(busy, what="the worker running the unbound job")
    tenant = await api_as("jobs:read", namespace="acme")
    body = await listing(tenant)
    assert [(w["worker_id"], w["running"], w["running_count"]) for w in body["workers"]] == [
        ("shared-1", [], 1)]
    assert job["id"] not in str(body)
    error_of(await (await api_as()).get(WORKERS), 401)  # no credential
