"""/health: is each store reachable within a short timeout?"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from functions.api.auth import Public
from functions.api.deps import Service
from functions.api.errors import error_response
from shared.api_schemas import ErrorResponse, Health
from shared.observability.logs import get_logger
from shared.queue.redis_queue import ping

log = get_logger("api")

router = APIRouter(tags=["health"])


# Public: load balancers and uptime checks call it without a credential, so it says which
# store failed and whether it refused or timed out, never a host, port, exception or
# message (those are logged).
@router.get("/health", response_model=Health, dependencies=[Public()],
            responses={503: {"model": ErrorResponse, "description": "A dependency failed"}})
async def health(service: Service) -> Health | JSONResponse:
    timeout = service.settings.health_timeout

    async def postgres() -> None:
        pool = await service.stores.pool()
        await pool.fetchval("SELECT 1", timeout=timeout)

    async def redis() -> None:
        await ping(service.stores.redis)  # every master, on a cluster

    async def check(probe: Callable[[], Awaitable[None]]) -> str:
        try:
            await asyncio.wait_for(probe(), timeout)
            return "ok"
        except Exception as exc:  # any failure: report it, never raise
            log.warning("health probe failed", extra={"store": probe.__name__,
                                                      "error": repr(exc)})
            return "timed out" if isinstance(exc, TimeoutError) else "unreachable"

    # Side by side: two hung stores cost one timeout, not two.
    results = await asyncio.gather(check(postgres), check(redis))
    checks = dict(zip(("postgres", "redis"), results, strict=True))
    failed = [name for name, result in checks.items() if result != "ok"]
    if failed:
        return error_response(
            503, "unavailable", f"unhealthy: {', '.join(failed)} unreachable",
            [{"loc": [name], "msg": checks[name], "type": "dependency_failed"}
             for name in failed])
    return Health(status="ok", checks=checks)
