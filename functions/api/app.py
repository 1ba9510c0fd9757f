"""The FastAPI application. ``create_app()`` builds it; ``serve()`` is the factory for a
process that only serves it (uvicorn locally, Mangum on Lambda)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from functions.api import (
    auth,
    console,
    dead_letters,
    docs_pages,
    errors,
    health,
    job_types,
    jobs,
    schedules,
    workers,
)
from functions.api.body_limit import BodyLimit
from functions.api.metrics import RequestMetrics
from functions.api.request_guard import RequestGuard
from shared.connections import Stores
from shared.core.service import JobService
from shared.registry import load
from shared.settings import Settings, get_settings

DESCRIPTION = """Durable job scheduler: PostgreSQL holds every job, Redis holds the queues,
asyncio workers run them. Delivery is at least once; a late duplicate attempt cannot
overwrite a newer one's result (fencing). Every error has the shape
`{"error": {"code", "message", "details"}}`."""


def create_app(settings: Settings | None = None, *, close_on_shutdown: bool = True) -> FastAPI:
    settings = settings or get_settings()
    stores = Stores(settings, redis_max_connections=settings.api_redis_max_connections,
                    redis_pool_timeout=settings.api_redis_pool_timeout)
    registry = load(settings.job_modules)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Connections open lazily on first use (Mangum runs lifespan per invocation, so
        # it is off there); under uvicorn we close them on the way out.
        yield
        if close_on_shutdown:
            await stores.close()

    prefix = settings.api_prefix
    app = FastAPI(
        title="async-job-scheduler",
        version="0.1.0",
        description=DESCRIPTION,
        docs_url=None,  # served by docs_pages, without a CDN
        redoc_url=None,
        openapi_url=f"{prefix}/openapi.json",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry hooks: this API's metrics are Prometheus
        # (shared.observability), and checking for OTel providers cost every request ~2 %
        # of its CPU.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.stores = stores
    # Concurrent single creates share a commit (group commit): see enqueue_coalescer.
    app.state.service = JobService(stores, registry, coalesce_creates=True)
    errors.install(app)
    docs_pages.install(app, prefix)
    routers = (jobs.router, dead_letters.router, health.router, job_types.router,
               schedules.router, workers.router, console.pages_router,
               console.fragments_router)
    for router in routers:
        app.include_router(router, prefix=prefix)
    auth.install(app, settings, stores, routers)  # refuses a route that declares no scope
    errors.document_refusals(app, hosts_checked=bool(settings.api_allowed_hosts))
    app.add_middleware(BodyLimit, limit=settings.max_payload_bytes,
                       batch_limit=5 * 1024 * 1024)
    # Before the body is read: a refused request costs no body.
    app.add_middleware(RequestGuard, allowed_hosts=settings.api_allowed_hosts)
    app.add_middleware(RequestMetrics, stores=stores)  # outermost: counts 413s too
    return app


def serve() -> FastAPI:
    """The app of a process that does nothing else (``uvicorn --factory
    functions.api.app:serve``; the Lambda handler does the same).

    Once it is built, everything allocated so far (modules, the app, its routes and
    schemas: about 80,000 objects) is moved out of the cyclic collector's reach
    (``gc.freeze``). A full collection walks every tracked object; over those it took
    ~55 ms here, and it runs on the event loop, so every request in flight waited for it:
    more than the whole 50 ms latency budget. They live as long as the process anyway.
    """
    app = create_app()
    gc.freeze()
    return app
