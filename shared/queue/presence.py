"""Which workers are alive and what each runs, and the limits in force: for the console.

Every worker writes its presence from its heartbeat loop (``worker/upkeep.py``): one
record with a time-to-live of a few heartbeats, so a worker that stops beating (SIGKILL,
a lost host) vanishes on its own, with nobody to clean up after it. A worker that stops
cleanly removes its record at once.

Layout (one hash tag, ``{prefix:workers}``, so every key is in one Redis Cluster slot and a
write is one pipelined round trip on a cluster as on one node):

- ``alive``          sorted set of worker ids by the time each last beat (ms): the index
                     readers list; ids whose record expired are pruned by writers.
- ``worker:<id>``    the worker's record (JSON), expiring ``ttl`` after its last beat.

The record is not the truth about any job (PostgreSQL is): the jobs it lists are what the
worker ran at its last beat, up to one heartbeat old.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, ValidationError

from shared.queue.redis_queue import RedisClient, RedisQueue, cluster_reachable

if TYPE_CHECKING:
    from shared.registry import Registry

# Ids not seen for this long are dropped from ``alive`` by the next writer (their records
# expired long before): the index stays as small as the fleet.
FORGET_MS = 3_600_000
# Most workers a listing returns (the most recently seen first).
MAX_LISTED = 1000


class RunningJob(BaseModel):
    id: str
    job_type: str
    started_at: datetime


class WorkerPresence(BaseModel):
    worker_id: str
    host: str
    pid: int
    queue: str
    started_at: datetime
    last_seen: datetime
    concurrency: int = Field(description="Jobs the worker runs at once, at most.")
    job_types: list[str] = Field(description="The job types the worker serves.")
    running: list[RunningJob] = Field(
        description="The jobs it ran at its last heartbeat (up to one heartbeat old; empty "
        "for a credential bound to a namespace, which sees only running_count).")
    running_count: int = Field(description="How many jobs it ran at its last heartbeat.")
    ttl_seconds: float = Field(
        description="The record expires this long after last_seen unless renewed.")


class LimitInForce(BaseModel):
    job_type: str
    queue: str
    concurrency_limit: int | None = Field(description="Attempts at once, across workers.")
    running: int | None = Field(
        description="Attempts holding a slot of the concurrency limit now (null: no limit).")
    rate_limit: int | None = Field(description="Starts allowed per rate_per_seconds.")
    rate_per_seconds: float | None
    started_in_window: int | None = Field(
        description="Starts within the last rate_per_seconds (null: no rate limit).")


def _base(prefix: str) -> str:
    return f"{{{prefix}:workers}}"


def _alive_key(prefix: str) -> str:
    return f"{_base(prefix)}:alive"


def _record_key(prefix: str, worker_id: str) -> str:
    return f"{_base(prefix)}:worker:{worker_id}"


class Presence:
    """One worker's presence: written by its heartbeat, removed when it stops."""

    def __init__(self, redis: RedisClient, prefix: str, *, worker_id: str, queue: str,
                 concurrency: int, job_types: list[str], ttl_seconds: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.worker_id = worker_id
        self.ttl_ms = max(int(ttl_seconds * 1000), 1000)
        self.started_at = datetime.now(UTC)
        self._fixed = {"worker_id": worker_id, "host": socket.gethostname(),
                       "pid": os.getpid(), "queue": queue, "started_at": self.started_at,
                       "concurrency": concurrency, "job_types": sorted(job_types),
                       "ttl_seconds": self.ttl_ms / 1000}

    def record(self, running: list[RunningJob]) -> WorkerPresence:
        return WorkerPresence(**self._fixed, last_seen=datetime.now(UTC), running=running,
                              running_count=len(running))

    async def beat(self, running: list[RunningJob]) -> None:
        """Write (or renew) the record: one pipelined round trip."""
        record = self.record(running)
        now_ms = int(record.last_seen.timestamp() * 1000)
        alive = _alive_key(self.prefix)
        with cluster_reachable():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(_record_key(self.prefix, self.worker_id), record.model_dump_json(),
                         px=self.ttl_ms)
                pipe.zadd(alive, {self.worker_id: now_ms})
                pipe.zremrangebyscore(alive, "-inf", now_ms - FORGET_MS)
                await pipe.execute()

    async def leave(self) -> None:
        """Remove the record at once (a clean stop): the worker is gone, not lagging."""
        with cluster_reachable():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(_record_key(self.prefix, self.worker_id))
                pipe.zrem(_alive_key(self.prefix), self.worker_id)
                await pipe.execute()


async def workers_alive(redis: RedisClient, prefix: str) -> list[WorkerPresence]:
    """Every worker whose record has not expired, by worker id (two round trips).

    A record that does not parse (written by another version) is left out rather than
    failing the whole listing.
    """
    with cluster_reachable():
        ids = [str(i) for i in
               await redis.zrange(_alive_key(prefix), 0, MAX_LISTED - 1, desc=True)]
        if not ids:
            return []
        # One slot (the hash tag): a plain MGET works on a cluster too.
        values = await redis.mget([_record_key(prefix, i) for i in ids])
    found: list[WorkerPresence] = []
    for value in values:
        if value is None:
            continue  # expired: the worker stopped beating
        try:
            found.append(WorkerPresence.model_validate_json(value))
        except ValidationError:
            continue
    return sorted(found, key=lambda w: w.worker_id)


async def limits_in_force(redis: RedisClient, prefix: str, registry: Registry
                          ) -> list[LimitInForce]:
    """Every registered job type that has a rate or concurrency limit, with what it uses
    of them now (one round trip per queue that has limited types), by job type."""
    limited = [jt for jt in registry.all() if jt.rate_limit or jt.concurrency_limit]
    by_queue: dict[str, list[str]] = {}
    for jt in limited:
        by_queue.setdefault(jt.queue, []).append(jt.name)
    usage: dict[str, tuple[int, int]] = {}
    for queue_name in sorted(by_queue):
        queue = RedisQueue(redis, prefix, queue_name)
        with cluster_reachable():
            usage.update(await queue.limit_usage(
                [jt.limit for jt in limited if jt.queue == queue_name]))
    out = []
    for jt in sorted(limited, key=lambda j: j.name):
        running, started = usage.get(jt.name, (0, 0))
        out.append(LimitInForce(
            job_type=jt.name, queue=jt.queue,
            concurrency_limit=jt.concurrency_limit or None,
            running=running if jt.concurrency_limit else None,
            rate_limit=jt.rate_limit[0] if jt.rate_limit else None,
            rate_per_seconds=jt.rate_limit[1] if jt.rate_limit else None,
            started_in_window=started if jt.rate_limit else None))
    return out
