"""Several worker processes and several API processes: the counters still add up on
the Pushgateway, each worker has its own group and deletes it when stopped cleanly
(SIGTERM), and no API process ever leaves a group."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import asyncpg
import httpx

from functions.scheduler.tick import tick
from shared.connections import Stores
from shared.observability import summed_counters
from shared.registry import Registry
from shared.settings import Settings
from tests.conftest import admin_headers
from tests.support.prom import Pushgateway, monitoring
from tests.support.servers import free_port
from tests.support.waits import eventually

WORKERS = ["fleet-w0", "fleet-w1"]  # two of each kind: several, on a two-core machine


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples
               if n == name and all(lab.get(k) == want for k, want in labels.items()))


async def groups_by_job(pgw: Pushgateway, client: httpx.AsyncClient) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for g in await pgw.groups(client):
        out.setdefault(g["job"], set()).add(g.get("instance", ""))
    return out


async def test_counters_of_many_processes_add_up_and_clean_stops_leave_no_group(
        settings: Settings, registry: Registry, spawn: Any, db: asyncpg.Pool) -> None:
    summed_counters.THIS_PROCESS.discard()
    async with httpx.AsyncClient(timeout=10, headers=await admin_headers(settings)
                                 ) as client, monitoring(
            client, prometheus=False) as (pgw, _):
        common = {"pushgateway_url": pgw.url, "push_interval_seconds": 0.2}
        workers = {w: await spawn("-m", "worker", "--concurrency", "4", worker_id=w, **common)
                   for w in WORKERS}
        ports = [free_port(), free_port()]
        apis = [await spawn("-m", "uvicorn", "--factory", "functions.api.app:create_app",
                            "--host", "127.0.0.1", "--port", str(port), "--log-level",
                            "warning", **common) for port in ports]

        async def api_up(port: int) -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return (await client.get(f"http://127.0.0.1:{port}/api/v1/job-types")
                        ).status_code == 200
            return False

        for port in ports:
            await eventually(lambda port=port: api_up(port), timeout=30, what="API up")  # type: ignore[misc]

        async def workers_pushing() -> bool:
            return (await groups_by_job(pgw, client)).get("ajs_worker") == set(WORKERS)

        await eventually(workers_pushing, timeout=30, what="every worker pushing")

        kinds = [{"job_type": "noop", "payload": {}},
                 {"job_type": "flaky", "payload": {"fail_times": 1}},
                 {"job_type": "broken", "payload": {}}]
        posts = [kinds[i % 3] if i % 4 else kinds[0] for i in range(30)]
        for i, job in enumerate(posts):  # round robin over the API processes
            url = f"http://127.0.0.1:{ports[i % 2]}/api/v1/jobs"
            assert (await client.post(url, json=job)).status_code == 201

        async def all_finished() -> bool:
            return not await db.fetchval("SELECT count(*) FROM jobs WHERE status NOT IN "
                                         "('COMPLETED', 'FAILED', 'CANCELLED')")

        await eventually(all_finished, timeout=40, what="every job finished")
        rows = await db.fetch("SELECT status, count(*) AS n, sum(attempts) AS a FROM jobs "
                              "GROUP BY status")
        pg = {r["status"]: (r["n"], r["a"]) for r in rows}
        stores = Stores(settings.model_copy(update={"pushgateway_url": pgw.url}))
        try:
            for _ in range(2):  # new series go out at 0 first, then with their sums
                assert (await tick(stores, registry))["metrics_published"] is True
        finally:
            await stores.close()

        async def added_up() -> bool:
            samples = await pgw.samples(client)
            return (total(samples, "jobs_completed_total", job="ajs_worker",
                          status="COMPLETED") == pg["COMPLETED"][0]
                    and total(samples, "jobs_completed_total", job="ajs_worker",
                              status="FAILED") == pg["FAILED"][0])

        await eventually(added_up, timeout=20, what="worker counters add up")
        samples = await pgw.samples(client)
        attempts = sum(a for _, a in pg.values())
        assert total(samples, "job_duration_seconds_count") == attempts
        assert total(samples, "jobs_created_total") == len(posts)
        assert total(samples, "api_requests_total", method="POST", route="/api/v1/jobs",
                     status="201") == len(posts)
        # Every worker did some of the work, and each counted only its own.
        per_worker = [total(samples, "jobs_completed_total", instance=w) for w in WORKERS]
        assert sum(per_worker) == attempts and all(per_worker)
        assert await groups_by_job(pgw, client) == {"ajs_worker": set(WORKERS),
                                                    "ajs_scheduler": {""}}

        workers["fleet-w0"].send_signal(signal.SIGTERM)
        assert await workers["fleet-w0"].wait() == 0
        assert (await groups_by_job(pgw, client))["ajs_worker"] == {"fleet-w1"}
        for api in apis:
            api.send_signal(signal.SIGTERM)
        await asyncio.gather(*(api.wait() for api in apis))
        workers["fleet-w1"].send_signal(signal.SIGTERM)
        assert await workers["fleet-w1"].wait() == 0
        assert await groups_by_job(pgw, client) == {"ajs_scheduler": {""}}
