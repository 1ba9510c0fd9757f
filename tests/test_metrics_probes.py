"""The worker's /metrics, /healthz and /readyz endpoints."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from shared.settings import Settings
from tests.support.servers import free_port
from tests.support.waits import eventually
from worker.probes import Probes
from worker.reporting import reporting


async def test_probes_answer_liveness_readiness_and_metrics() -> None:
    registry = CollectorRegistry()
    Counter("things_total", "Things.", registry=registry).inc(3)
    state = {"ready": False}
    probes = Probes("127.0.0.1", 0, registry, ready=lambda: state["ready"])
    port = await probes.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 503
            state["ready"] = True
            assert (await client.get("/readyz")).status_code == 200
            scraped = await client.get("/metrics")
            assert scraped.headers["content-type"].startswith("text/plain")
            values = {s.name: s.value for fam in text_string_to_metric_families(scraped.text)
                      for s in fam.samples}
            assert values["things_total"] == 3
            openmetrics = await client.get(
                "/metrics", headers={"Accept": "application/openmetrics-text"})
            assert openmetrics.headers["content-type"].startswith("application/openmetrics")
            assert (await client.get("/nope")).status_code == 404
            assert (await client.post("/metrics")).status_code == 405
    finally:
        await probes.close()


async def test_a_silent_client_does_not_block_the_others() -> None:
    probes = Probes("127.0.0.1", 0, CollectorRegistry(), ready=lambda: True)
    port = await probes.start()
    try:
        _, silent = await asyncio.open_connection("127.0.0.1", port)  # sends nothing
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200
        silent.close()
    finally:
        await probes.close()


async def test_a_running_worker_reports_ready_once_it_claims(settings: Settings,
                                                             registry: Any) -> None:
    from worker.pool import Worker

    port = free_port()
    s = settings.model_copy(update={"probe_port": port, "probe_host": "127.0.0.1",
                                    "worker_id": "probe-worker"})
    worker = Worker(s, registry)
    async with reporting(s, worker):
        task = asyncio.create_task(worker.run())
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(ready, what="worker ready")
            assert (await client.get("/healthz")).status_code == 200
            text = (await client.get("/metrics")).text
            assert 'jobs_completed_total{job_type="noop",status="COMPLETED"}' in text
            assert "worker_active 1.0" in text
        worker.stop()
        await asyncio.wait_for(task, 30)
