"""Pushing to a real Pushgateway: a worker's own group, deleted on a clean stop and left
behind by a crash; one scheduler group for the whole system; never a group per API
container; an unreachable gateway stops nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from shared.connections import Stores
from shared.observability import summed_counters
from shared.observability.pushgateway import SCHEDULER_JOB, WORKER_JOB, Pusher
from shared.registry import Registry
from shared.settings import Settings
from tests.conftest import admin_headers
from tests.support.prom import Pushgateway, monitoring
from tests.support.servers import free_port
from tests.support.waits import eventually
from worker.pool import Worker
from worker.reporting import reporting


@pytest.fixture
async def pushgateway() -> AsyncIterator[tuple[Pushgateway, httpx.AsyncClient]]:
    async with httpx.AsyncClient(timeout=10) as client, monitoring(client, prometheus=False
                                                                   ) as (pgw, _):
        yield pgw, client


def group_of(groups: list[dict[str, str]], **labels: str) -> dict[str, str] | None:
    return next((g for g in groups if all(g.get(k) == v for k, v in labels.items())), None)


async def push_time(pgw: Pushgateway, client: httpx.AsyncClient, instance: str) -> float:
    for name, labels, value in await pgw.samples(client):
        if name == "push_time_seconds" and labels.get("instance") == instance:
            return value
    return 0.0


async def test_worker_pushes_its_own_group_and_deletes_it_on_a_clean_stop(
        pushgateway: tuple[Pushgateway, httpx.AsyncClient], settings: Settings,
        registry: Registry) -> None:
    pgw, client = pushgateway
    s = settings.model_copy(update={"pushgateway_url": pgw.url, "push_interval_seconds": 0.1,
                                    "worker_id": "pushing-worker"})
    worker = Worker(s, registry)
    async with reporting(s, worker):
        task = asyncio.create_task(worker.run())

        async def claiming() -> bool:
            return worker.ready

        await eventually(claiming, timeout=30, what="worker claiming")
        first = await eventually(lambda: push_time(pgw, client, "pushing-worker"),
                                 timeout=30, what="first push")

        async def pushed_again() -> bool:
            return await push_time(pgw, client, "pushing-worker") > first

        await eventually(pushed_again, timeout=30, what="a later push")
        groups = await pgw.groups(client)
        assert group_of(groups, job=WORKER_JOB, instance="pushing-worker", queue=s.queue)
        worker.stop()
        await asyncio.wait_for(task, 30)
    assert not group_of(await pgw.groups(client), instance="pushing-worker")


async def test_a_worker_that_crashes_leaves_its_group_for_the_alert(
        pushgateway: tuple[Pushgateway, httpx.AsyncClient], settings: Settings,
        registry: Registry) -> None:
    pgw, client = pushgateway
    s = settings.model_copy(update={"pushgateway_url": pgw.url, "worker_id": "crashing"})
    worker = Worker(s, registry)
    with pytest.raises(RuntimeError):
        async with reporting(s, worker):
            await eventually(lambda: push_time(pgw, client, "crashing"), what="first push")
            raise RuntimeError("worker crashed")
    assert group_of(await pgw.groups(client), job=WORKER_JOB, instance="crashing")
    await worker.stores.close()


async def test_an_unreachable_pushgateway_stops_nothing() -> None:
    pusher = Pusher(f"http://127.0.0.1:{free_port()}", WORKER_JOB, {"instance": "x"},
                    CollectorRegistry(), timeout=1.0)
    started = time.monotonic()
    assert await pusher.push() is False
    assert await pusher.delete() is False
    stop = asyncio.Event()
    loop = asyncio.create_task(pusher.run(0.05, stop))
    await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(loop, 5)
    assert time.monotonic() - started < 5


async def test_the_scheduler_pushes_one_group_for_the_whole_system(
        pushgateway: tuple[Pushgateway, httpx.AsyncClient], settings: Settings,
        registry: Registry) -> None:
    """API requests and ticks from any number of processes end up in one group."""
    from functions.api.app import create_app
    from functions.scheduler.tick import tick

    pgw, client = pushgateway
    summed_counters.THIS_PROCESS.discard()
    s = settings.model_copy(update={"pushgateway_url": pgw.url})
    apps = [create_app(s) for _ in range(3)]  # three "containers" (one process here)
    headers = await admin_headers(s)
    for i, app in enumerate(apps):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api", headers=headers) as api:
            for _ in range(i + 1):
                created = await api.post("/api/v1/jobs", json={"job_type": "noop",
                                                                "payload": {}})
                assert created.status_code == 201
        await app.state.stores.close()
    stores = Stores(s)
    try:
        for _ in range(2):
            result: dict[str, Any] = await tick(stores, registry)
            assert result["metrics_published"] is True
    finally:
        await stores.close()

    groups = await pgw.groups(client)
    assert [g["job"] for g in groups] == [SCHEDULER_JOB]
    samples = await pgw.samples(client)
    created = {labels["job_type"]: value for name, labels, value in samples
               if name == "jobs_created_total"}
    assert created["noop"] == 6
    assert set(created) == set(registry.names())  # every type, at 0 when none was created
    depth = {labels["priority"]: value for name, labels, value in samples
             if name == "queue_depth" and labels["queue"] == s.queue}
    assert sum(depth.values()) == 6 and set(depth) == {str(p) for p in range(1, 11)}
    assert [v for n, _, v in samples if n == "dead_letter_size"] == [0]
