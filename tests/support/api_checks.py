"""Checks the API tests share: the one error shape, and what the stores hold afterwards.

``redis_state`` snapshots every key of the test's prefix, so "nothing was pushed" is an
equality; ``RedisMonitor`` sees the commands Redis really executed (MONITOR).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis

from tests.conftest import REDIS_URL


def error_of(resp: httpx.Response, status: int) -> dict[str, Any]:
    """The body must be ``{"error": {"code", "message", "details"}}`` and nothing else."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], list)
    return dict(body["error"])


def locs(error: dict[str, Any]) -> list[list[Any]]:
    return [d["loc"] for d in error["details"]]


async def redis_state(namespace: str) -> dict[str, Any]:
    """Every key of the test's prefix with its contents: any push shows up here."""
    r = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        state: dict[str, Any] = {}
        async for key in r.scan_iter(match=f"*{namespace}*", count=1000):
            kind = await r.type(key)
            if kind == "zset":
                state[key] = await r.zrange(key, 0, -1, withscores=True)
            elif kind == "set":
                state[key] = sorted(await r.smembers(key))
            elif kind == "hash":
                state[key] = await r.hgetall(key)
            elif kind == "list":
                state[key] = await r.lrange(key, 0, -1)
            else:
                state[key] = await r.get(key)
        return state
    finally:
        await r.aclose()


async def job_count(db: asyncpg.Pool) -> int:
    return int(await db.fetchval("SELECT count(*) FROM jobs"))


async def assert_untouched(db: asyncpg.Pool, namespace: str, rows: int = 0,
                           redis_before: dict[str, Any] | None = None) -> None:
    assert await job_count(db) == rows
    assert await redis_state(namespace) == (redis_before or {})


class RedisMonitor:
    """Collect every command Redis executes while the block runs (MONITOR).

    On the way out a marker command is sent and awaited, so every command issued inside
    the block has been seen before the list is handed back.
    """

    def __init__(self) -> None:
        self.client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        self.commands: list[dict[str, Any]] = []
        self.marker = f"end-of-monitor-{secrets.token_hex(8)}"

    async def __aenter__(self) -> list[dict[str, Any]]:
        self.monitor = self.client.monitor()
        await self.monitor.__aenter__()
        self.task = asyncio.create_task(self._collect())
        return self.commands

    async def _collect(self) -> None:
        async for command in self.monitor.listen():
            if self.marker in command["command"]:
                return
            self.commands.append(command)

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.client.echo(self.marker)
            await asyncio.wait_for(self.task, 10)
        finally:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            await self.monitor.__aexit__(None, None, None)
            await self.client.aclose()


def mentions(state: dict[str, Any], job_id: str) -> list[str]:
    """The keys of a ``redis_state`` snapshot that name or hold ``job_id`` (locks too)."""
    return [key for key, value in state.items() if job_id in key or job_id in repr(value)]


def closed_port() -> int:
    """A local port nothing listens on: bound once by us, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def create(api: httpx.AsyncClient, job_type: str = "noop", **fields: Any
                 ) -> dict[str, Any]:
    """POST a job through the API and return it (asserting the 201)."""
    resp = await api.post("/api/v1/jobs", json={"job_type": job_type, **fields})
    assert resp.status_code == 201, resp.text
    job: dict[str, Any] = resp.json()
    return job
