"""How a worker's metrics leave the process while it runs: the probe server and the
Pushgateway push loop, started around ``Worker.run()``.

Only a clean stop deletes the worker's Pushgateway group. A worker that crashed keeps its
last push, whose ``push_time_seconds`` then ages until the stale-worker alert fires: a
crash should page someone, a deploy should not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from shared.observability import metrics
from shared.observability.logs import get_logger
from shared.observability.pushgateway import worker_pusher
from shared.settings import Settings
from worker.pool import Worker
from worker.probes import Probes

log = get_logger("worker")


@contextlib.asynccontextmanager
async def reporting(settings: Settings, worker: Worker) -> AsyncIterator[Probes | None]:
    metrics.init_worker_series(
        (t.job_type for t in worker.types),
        [(t.job_type, "rate") for t in worker.types if t.rate]
        + [(t.job_type, "concurrency") for t in worker.types if t.concurrency])
    probes: Probes | None = None
    if settings.probe_port:
        probes = Probes(settings.probe_host, settings.probe_port, metrics.REGISTRY,
                        ready=lambda: worker.ready)
        port = await probes.start()
        log.info("probes listening", extra={"host": settings.probe_host, "port": port})
    pusher = worker_pusher(settings, metrics.REGISTRY)
    stop = asyncio.Event()
    loop = (asyncio.create_task(pusher.run(settings.push_interval_seconds, stop),
                                name="push-loop") if pusher else None)
    clean = False
    try:
        yield probes
        clean = True
    finally:
        stop.set()
        if loop is not None:
            await loop
        if pusher is not None and clean and await pusher.delete():
            log.info("pushgateway group deleted", extra={"worker_id": settings.worker_id})
        if probes is not None:
            await probes.close()
