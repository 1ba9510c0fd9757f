"""The API's Redis connections are bounded (``api_redis_max_connections``): a burst of
requests larger than the pool waits for a free connection and every request succeeds."""

from __future__ import annotations

import asyncio

import httpx
import redis.asyncio as aioredis

from shared.settings import Settings
from tests.conftest import REDIS_URL, admin_headers
from tests.support.api_checks import error_of
from tests.support.job_api import PREFIX


async def named_connections(name: str) -> int:
    r = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return sum(1 for c in await r.client_list() if c.get("name") == name)
    finally:
        await r.aclose()


async def test_a_burst_beyond_the_pool_waits_and_opens_no_more_connections(
        settings: Settings, namespace: str) -> None:
    from functions.api.app import create_app

    # The client name (redis-py reads it from the URL) lets CLIENT LIST count our connections.
    sep = "&" if "?" in REDIS_URL else "?"
    app = create_app(settings.model_copy(update={
        "redis_url": f"{REDIS_URL}{sep}client_name={namespace}",
        "api_redis_max_connections": 3}))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api",
                                     headers=await admin_headers(settings)) as api:
            answers = await asyncio.gather(*(api.get(f"{PREFIX}/health") for _ in range(40)),
                                           *(api.get(f"{PREFIX}/jobs/stats") for _ in range(10)))
            assert [a.status_code for a in answers] == [200] * 50
            opened = await named_connections(namespace)
            assert 1 <= opened <= 3, f"{opened} connections for a pool of 3"
    finally:
        await app.state.stores.close()
    assert await named_connections(namespace) == 0


async def test_no_free_connection_within_the_pool_timeout_is_a_503(settings: Settings) -> None:
    from functions.api.app import create_app

    app = create_app(settings.model_copy(update={"api_redis_max_connections": 1,
                                                 "api_redis_pool_timeout": 0.2}))
    pool = app.state.stores.redis.connection_pool
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api",
                                     headers=await admin_headers(settings)) as api:
            held = await pool.get_connection()  # the only one
            try:
                started = asyncio.get_running_loop().time()
                busy = await api.get(f"{PREFIX}/jobs/stats")
                waited = asyncio.get_running_loop().time() - started
            finally:
                await pool.release(held)
            error = error_of(busy, 503)
            assert error["details"][0]["loc"] == ["redis"]
            assert busy.headers["Retry-After"] == "1"
            assert 0.2 <= waited < 2
            assert (await api.get(f"{PREFIX}/jobs/stats")).status_code == 200
    finally:
        await app.state.stores.close()
