"""GET /api/v1/health: 200 when PostgreSQL and Redis both answer, 503 naming the one that
does not, within the health timeout whether the store refuses or never replies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from shared.settings import Settings
from tests.support.api_checks import closed_port, error_of

HEALTH = "/api/v1/health"


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A server that accepts connections and never says a word (a hung store)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    for w in held:
        w.close()
    server.close()
    await server.wait_closed()


async def health_of(settings: Settings, **overrides: object) -> tuple[httpx.Response, float]:
    from functions.api.app import create_app

    app = create_app(settings.model_copy(update={"health_timeout": 0.5, **overrides}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api") as client:
        started = time.monotonic()
        resp = await client.get(HEALTH)
        took = time.monotonic() - started
    await app.state.stores.close()
    return resp, took


def pg_url(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


async def test_health_is_200_when_both_stores_answer(api):
    resp = await api.get(HEALTH)
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok"}}


@pytest.mark.parametrize("down", ["redis", "postgres"])
async def test_health_is_503_naming_a_store_that_refuses(settings, down):
    url = {"redis": {"redis_url": f"redis://127.0.0.1:{closed_port()}/0"},
           "postgres": {"database_url": pg_url(closed_port())}}[down]
    resp, took = await health_of(settings, **url)
    error = error_of(resp, 503)
    assert error["code"] == "unavailable"
    assert error["message"] == f"unhealthy: {down} unreachable"
    assert [d["loc"] for d in error["details"]] == [[down]]
    assert error["details"][0]["type"] == "dependency_failed"
    assert took < 2, f"health took {took:.2f} s"


@pytest.mark.parametrize("down", ["redis", "postgres"])
async def test_health_is_503_naming_a_store_that_hangs(settings, silent_port, down):
    url = {"redis": {"redis_url": f"redis://127.0.0.1:{silent_port}/0"},
           "postgres": {"database_url": pg_url(silent_port)}}[down]
    resp, took = await health_of(settings, **url)
    error = error_of(resp, 503)
    assert [d["loc"] for d in error["details"]] == [[down]]
    assert error["details"][0]["msg"] == "timed out"
    assert took < 2, f"health took {took:.2f} s"


async def test_health_names_both_when_both_are_down(settings):
    resp, took = await health_of(settings, redis_url=f"redis://127.0.0.1:{closed_port()}/0",
                                 database_url=pg_url(closed_port()))
    error = error_of(resp, 503)
    assert error["message"] == "unhealthy: postgres, redis unreachable"
    assert [d["loc"] for d in error["details"]] == [["postgres"], ["redis"]]
    assert took < 2


async def test_two_hung_stores_cost_one_timeout(settings, silent_port):
    resp, took = await health_of(settings, redis_url=f"redis://127.0.0.1:{silent_port}/0",
                                 database_url=pg_url(silent_port), health_timeout=1.0)
    error = error_of(resp, 503)
    assert [d["loc"] for d in error["details"]] == [["postgres"], ["redis"]]
    assert took < 1.9, f"the probes ran one after the other ({took:.2f} s)"


@pytest.mark.parametrize("down", ["redis", "postgres"])
async def test_health_names_the_store_but_not_its_address_or_error(settings, down):
    """The 503 says which store failed; the address, port, user and exception text stay in
    the log (they map the network for whoever can reach /health)."""
    port = closed_port()
    url = {"redis": {"redis_url": f"redis://secretuser@127.0.0.1:{port}/0"},
           "postgres": {"database_url": f"postgresql://secretuser@127.0.0.1:{port}/postgres"}}
    resp, _ = await health_of(settings, **url[down])
    error = error_of(resp, 503)
    assert error["details"] == [{"loc": [down], "msg": "unreachable",
                                 "type": "dependency_failed"}]
    for secret in (str(port), "127.0.0.1", "secretuser", "Error", "Connect"):
        assert secret not in resp.text
