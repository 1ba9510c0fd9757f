"""The connections a process holds, opened lazily on the running event loop.

Lambda containers keep one event loop (Mangum), so what is opened on the first
invocation serves the warm ones; pools must not be opened in ASGI lifespan events, which
Mangum runs on every invocation.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from shared.queue.locks import Redlock
from shared.queue.redis_queue import RedisClient, RedisQueue, connect
from shared.settings import Settings
from shared.store.jobs import JobStore
from shared.store.pool import create_pool


class Stores:
    def __init__(self, settings: Settings, *, redis_max_connections: int | None = None,
                 redis_pool_timeout: float = 5.0,
                 pool_options: dict[str, Any] | None = None) -> None:
        """``redis_max_connections`` bounds the shared Redis client's pool (the API sets
        it); None keeps redis-py's default. ``pool_options`` override asyncpg's pool
        options (the worker keeps its connections open: see ``worker.pool``)."""
        self.settings = settings
        self._pool_options = pool_options or {}
        self._redis_limit = (redis_max_connections, redis_pool_timeout)
        self._pool: asyncpg.Pool | None = None
        self._redis: RedisClient | None = None
        self._queues: dict[str, RedisQueue] = {}
        self._locks: Redlock | None = None
        self._opening = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    self._pool = await create_pool(self.settings, **self._pool_options)
        return self._pool

    async def store(self) -> JobStore:
        return JobStore(await self.pool())

    @property
    def redis(self) -> RedisClient:
        if self._redis is None:
            self._redis = connect(self.settings.redis_url, *self._redis_limit,
                                  cluster=self.settings.redis_cluster)
        return self._redis

    def queue(self, name: str | None = None) -> RedisQueue:
        name = name or self.settings.queue
        if name not in self._queues:
            self._queues[name] = RedisQueue(self.redis, self.settings.redis_prefix, name)
        return self._queues[name]

    @property
    def locks(self) -> Redlock:
        if self._locks is None:
            urls = self.settings.lock_urls
            clients = [self.redis if u == self.settings.redis_url else connect(u) for u in urls]
            self._locks = Redlock(clients, self.settings.redis_prefix)
        return self._locks

    async def close(self) -> None:
        if self._locks is not None:
            for client in self._locks.clients:
                if client is not self._redis:
                    await client.aclose()
            self._locks = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        self._queues.clear()
        if self._pool is not None:
            try:  # close waits for every connection to come back: not forever
                await asyncio.wait_for(self._pool.close(), 10.0)
            except TimeoutError:
                self._pool.terminate()
            self._pool = None
