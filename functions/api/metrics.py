"""API request counts and latencies, summed across every API container.

Each request is counted by method, route template (``/api/v1/jobs/{job_id}``, never the
raw path, which would make a series per job) and status, and timed by method and route.
Then, before the request (and so the Lambda invocation) ends, this container's new
increments, these and ``jobs_created_total``, go to the sums in Redis in one round trip
(``shared.observability.summed_counters``); the scheduler publishes the sums. A container
never pushes to the Pushgateway, so none leaves a group behind. A failed flush costs the
request nothing: the increments wait for the next request.
"""

from __future__ import annotations

import asyncio
import time

from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.connections import Stores
from shared.observability import metrics, summed_counters
from shared.observability.logs import get_logger

log = get_logger("api")

UNMATCHED = "unmatched"  # 404s and requests refused before routing (413)
FLUSH_TIMEOUT = 1.0
FLUSH_BACKOFF = 5.0


class RequestMetrics:
    """ASGI middleware; add it last so that it wraps the others (413s count too)."""

    def __init__(self, app: ASGIApp, stores: Stores) -> None:
        self.app = app
        self.stores = stores
        self.enabled = bool(stores.settings.pushgateway_url)
        self.key = summed_counters.key(stores.settings.redis_prefix)
        self._retry_at = 0.0  # while Redis fails, flush at most every FLUSH_BACKOFF s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            method = scope.get("method", "GET")
            metrics.api_requests_total.labels(method, route, str(status)).inc()
            metrics.api_request_duration_seconds.labels(method, route).observe(elapsed)
            await self._flush()

    async def _flush(self) -> None:
        if not self.enabled:  # no Pushgateway: nobody would publish the sums
            return
        if time.monotonic() < self._retry_at:
            return  # Redis failed a moment ago: let requests pass without waiting on it
        try:
            async with asyncio.timeout(FLUSH_TIMEOUT):
                await summed_counters.THIS_PROCESS.flush(self.stores.redis, self.key)
        except (RedisError, OSError, TimeoutError) as exc:
            # The increments stay pending. (A timeout after EXEC reached Redis would add
            # them twice: the one way to over-count, and only while Redis is failing.)
            if not self._retry_at:
                log.warning("metrics flush to Redis failed; kept for a later request",
                            extra={"error": repr(exc)})
            self._retry_at = time.monotonic() + FLUSH_BACKOFF
        else:
            self._retry_at = 0.0


def route_template(scope: Scope) -> str:
    """The matched route as a template: ``/api/v1/jobs/{job_id}``.

    Built from the path and the matched path parameters rather than from the route
    object, whose ``path`` lacks the router's prefix in recent FastAPI releases. A raw
    value never becomes a label: when a parameter cannot be placed, the answer is
    ``unmatched``.
    """
    if "endpoint" not in scope:
        return UNMATCHED
    segments = str(scope.get("path", "")).split("/")
    for name, value in (scope.get("path_params") or {}).items():
        text = str(value)
        for i in range(len(segments) - 1, 0, -1):
            if segments[i] == text:
                segments[i] = "{" + name + "}"
                break
        else:
            return UNMATCHED
    return "/".join(segments)
