"""Redlock over one or more independent Redis nodes, batched: one script call per node
acquires, extends or releases the locks of many jobs at once.

Why our own and not a library: the worker claims jobs in batches, and the Redlock
libraries for asyncio lock one key per call (N round trips per node per batch). The
algorithm is the published one: a lock is held when a majority of nodes granted it within
its validity time (TTL minus elapsed time minus clock drift); otherwise it is released
everywhere. Redlock alone is not safe under process pauses, which is why every write to
PostgreSQL also carries a fencing token (the attempt number).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as aioredis

from shared.queue.redis_queue import RedisClient, connect

_SCRIPT = (Path(__file__).with_name("lua") / "lock.lua").read_text()
CLOCK_DRIFT_FACTOR = 0.01


class Redlock:
    def __init__(self, clients: Sequence[RedisClient], prefix: str) -> None:
        self.clients = list(clients)
        self.scripts = [c.register_script(_SCRIPT) for c in self.clients]
        self.quorum = len(self.clients) // 2 + 1
        self.prefix = f"{{{prefix}:locks}}"

    @classmethod
    def from_urls(cls, urls: Sequence[str], prefix: str) -> Redlock:
        return cls([connect(u) for u in urls], prefix)

    @staticmethod
    def new_token(owner: str) -> str:
        return f"{owner}:{secrets.token_hex(8)}"

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    async def _each(self, op: str, names: Sequence[str], token: str, ttl_ms: int,
                    raise_errors: bool = False) -> list[list[int] | None]:
        keys = [self.key(n) for n in names]

        async def one(i: int) -> list[int] | None:
            try:
                return [int(x) for x in await self.scripts[i](keys=keys,
                                                               args=[op, token, ttl_ms])]
            except (aioredis.RedisError, OSError):
                if raise_errors:
                    raise
                return None  # an unreachable node counts as a refusal

        return list(await asyncio.gather(*(one(i) for i in range(len(self.clients)))))

    async def acquire(self, names: Sequence[str], token: str, ttl: float, *,
                      raise_errors: bool = False) -> tuple[list[str], dict[str, float]]:
        """Lock each name. Returns the names now held, and for the others how long (s)
        until the current holder's lock runs out. ``raise_errors``: an unreachable node
        raises instead of counting as a refusal (one node: "Redis is down", not "busy")."""
        if not names:
            return [], {}
        ttl_ms = int(ttl * 1000)
        started = time.monotonic()
        replies = await self._each("acquire", names, token, ttl_ms, raise_errors)
        elapsed_ms = (time.monotonic() - started) * 1000
        validity = ttl_ms - elapsed_ms - ttl_ms * CLOCK_DRIFT_FACTOR - 2
        held: list[str] = []
        busy: dict[str, float] = {}
        for i, name in enumerate(names):
            granted = sum(1 for r in replies if r is not None and r[i] == 1)
            if granted >= self.quorum and validity > 0:
                held.append(name)
            else:
                waits = [-r[i] for r in replies if r is not None and r[i] < 0]
                busy[name] = (max(waits) if waits else ttl_ms) / 1000
        if busy:
            await self.release(list(busy), token)
        return held, busy

    async def extend(self, names: Sequence[str], token: str, ttl: float) -> list[str]:
        """Extend the locks still ours on a majority; returns the names kept."""
        if not names:
            return []
        replies = await self._each("extend", names, token, int(ttl * 1000))
        return [n for i, n in enumerate(names)
                if sum(1 for r in replies if r is not None and r[i] == 1) >= self.quorum]

    async def release(self, names: Sequence[str], token: str) -> None:
        if names:
            await self._each("release", names, token, 0)

    async def close(self) -> None:
        for c in self.clients:
            await c.aclose()
