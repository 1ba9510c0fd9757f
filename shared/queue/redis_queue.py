"""The Redis side of the queue: derived state that PostgreSQL can always rebuild.

Layout (every key of one queue shares the hash tag ``{prefix:queue}``, so each script
touches a single Redis Cluster slot):

- ``ready:<type>``  sorted set per job type, score ``priority * SCALE + seq``: strict
  priority, then FIFO by the PostgreSQL sequence (which survives a Redis flush).
- ``types``         the job types that may have ready jobs.
- ``delayed``       sorted set by due time (ms); ``delayed_meta`` keeps type and ready score.
- ``lease``         sorted set of running jobs by lease deadline (ms); ``reaped`` holds
                    expired ones while a reaper decides their fate.
- ``running:<type>``/``rate:<type>``  concurrency and rate-limit state, shared by all workers.
- ``cancel``        ids whose cancel was requested; ``signal`` wakes idle workers.

Every multi-key step is one Lua script (``shared/queue/lua``). Scripts read Redis's own clock, so
all workers agree on "now".

On a Redis Cluster (``AJS_REDIS_CLUSTER``) the hash tag puts a whole queue in one slot, so
every script runs on the one master that owns it (redis-py routes a script by its first
key), and different queues spread over slots and masters. Scripts also build keys from
``base`` (``ready:<type>``, ``running:<type>``, ``rate:<type>``, ``lock:<id>``): they carry
the same tag, so they are in the script's slot, which Redis requires of every key a script
touches. Cancel signals use sharded pub/sub there (see :class:`CancelSubscription`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, SlotNotCoveredError
from redis.typing import EncodableT

if TYPE_CHECKING:
    from shared.core.lifecycle import Move

FAR_FUTURE_MS = 253402300799000  # 9999-12-31T23:59:59Z
SCALE = 10**14  # ready score = priority * SCALE + seq; exact in a double up to 2**53
LUA = Path(__file__).with_name("lua")


def ready_score(priority: int, seq: int) -> int:
    return priority * SCALE + seq


def epoch_ms(moment: datetime | None) -> int:
    """Milliseconds since the epoch; 0 (due now) for None. A naive moment can only be
    asyncpg's decoding of PostgreSQL's -infinity/infinity (datetime.min/max), which the API
    refuses today but rows written before may hold: due now, or far in the future."""
    if moment is None:
        return 0
    if moment.tzinfo is None:
        return 0 if moment.year < 1970 else FAR_FUTURE_MS
    return int(moment.timestamp() * 1000)


@dataclass(slots=True)
class Placement:
    """Where one job goes in Redis. (Not frozen: one is built per job of a 1,000-job push,
    and a frozen dataclass's init costs three times a plain one's.)"""

    job_id: uuid.UUID | str
    job_type: str
    priority: int
    seq: int
    due_ms: int = 0  # 0: ready now

    def packed(self) -> str:
        """What push.lua takes per job (all of a push's jobs go as one argument)."""
        return (f"{self.job_id}|{self.job_type}|{ready_score(self.priority, self.seq)}|"
                f"{self.due_ms}")

    @classmethod
    def of(cls, row: Any) -> Placement:
        """From a row with id, job_type, priority, seq and run_at."""
        return cls(row["id"], row["job_type"], row["priority"], row["seq"],
                   epoch_ms(row["run_at"]))


@dataclass(frozen=True, slots=True)
class TypeLimit:
    job_type: str
    concurrency: int = 0  # 0: unlimited
    rate: int = 0  # starts allowed per ``per_ms``; 0: unlimited
    per_ms: int = 1000


# A single node or a cluster: the commands we use exist on both, routed by key on a cluster.
RedisClient: TypeAlias = aioredis.Redis | RedisCluster


@contextlib.contextmanager
def cluster_reachable() -> Iterator[None]:
    """A cluster that cannot be reached raises what a single node raises: ConnectionError.

    redis-py's cluster client says "no node answers" (or "a slot has no master", during a
    failover) with RedisClusterException, which is not a RedisError, so every ``except
    RedisError`` that keeps a loop alive or turns an outage into a 503 would miss it.
    Its other uses (a command whose keys span slots) are bugs and pass unchanged.
    """
    try:
        yield
    except RedisClusterException as exc:
        if isinstance(exc, SlotNotCoveredError) or isinstance(
                exc.__cause__, RedisConnectionError | OSError) or "not covered" in str(exc):
            raise RedisConnectionError(f"Redis Cluster unreachable: {exc}") from exc
        raise


class Cluster(RedisCluster):
    """redis-py's asyncio RedisCluster, with :func:`cluster_reachable`'s errors, and
    optionally a bound on the commands in flight (see :meth:`bound`)."""

    gate: asyncio.Semaphore | None = None
    gate_timeout: float = 5.0

    def bound(self, max_connections: int, pool_timeout: float) -> Cluster:
        """At most ``max_connections`` commands at once, so at most that many connections
        to each node; a command beyond waits up to ``pool_timeout`` s for its turn, then
        raises ConnectionError: what BlockingConnectionPool does on one node. (The
        cluster client's own per-node limit does not wait: it fails at once.)"""
        self.gate = asyncio.Semaphore(max_connections)
        self.gate_timeout = pool_timeout
        return self

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        with cluster_reachable():
            return await super().initialize(*args, **kwargs)

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        with cluster_reachable():
            if self.gate is None:
                return await super().execute_command(*args, **kwargs)
            try:
                async with asyncio.timeout(self.gate_timeout):
                    await self.gate.acquire()
            except TimeoutError:
                raise RedisConnectionError(
                    f"no free Redis connection within {self.gate_timeout} s") from None
            try:
                return await super().execute_command(*args, **kwargs)
            finally:
                self.gate.release()


def connect(url: str, max_connections: int | None = None, pool_timeout: float = 5.0,
            *, cluster: bool = False) -> RedisClient:
    """``cluster``: ``url`` is any one node of a Redis Cluster; the client learns the slot
    map from it and follows MOVED/ASK redirections. hiredis parses replies when installed
    (it is a dependency)."""
    if cluster:
        client = cast(Cluster, Cluster.from_url(  # from_url builds a cls
            url, decode_responses=True, health_check_interval=30))
        return client if max_connections is None else client.bound(max_connections,
                                                                    pool_timeout)
    if max_connections is None:
        return aioredis.Redis.from_url(url, decode_responses=True, health_check_interval=30)
    # Bounded: a burst of requests waits up to pool_timeout for a free connection instead
    # of opening one each (then ConnectionError, which the API answers as a 503).
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout, decode_responses=True,
        health_check_interval=30)
    return aioredis.Redis.from_pool(pool)


async def ping(client: RedisClient) -> None:
    """Every master must answer: on a cluster a master that is down leaves its slots, and
    the queues in them, unserved, although the other nodes still answer."""
    if isinstance(client, RedisCluster):
        await client.ping(target_nodes=RedisCluster.PRIMARIES)
    else:
        await client.ping()


class RedisQueue:
    def __init__(self, client: RedisClient, prefix: str, queue: str = "default") -> None:
        self.redis = client
        self.sharded = isinstance(client, RedisCluster)  # sharded pub/sub for cancels
        self.queue = queue
        self.base = f"{{{prefix}:{queue}}}"
        b = self.base
        self.k_types, self.k_delayed, self.k_meta = f"{b}:types", f"{b}:delayed", f"{b}:dmeta"
        self.k_lease, self.k_reaped = f"{b}:lease", f"{b}:reaped"
        self.k_cancel, self.k_signal = f"{b}:cancel", f"{b}:signal"
        self.cancel_channel = f"{b}:cancel"
        self.held: list[tuple[str, str]] = []  # of the last claim: see claim()
        self._s: dict[str, AsyncScript] = {
            p.stem: client.register_script(p.read_text()) for p in LUA.glob("*.lua")}

    def ready_key(self, job_type: str) -> str:
        return f"{self.base}:ready:{job_type}"

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._s[name](keys=keys, args=args)

    # --- enqueue side ---------------------------------------------------------------------

    async def push(self, placements: Sequence[Placement]) -> int:
        """Place jobs (one round trip however many) and wake one idle worker."""
        if not placements:
            return 0
        args: list[Any] = [self.base, ":".join([p.packed() for p in placements])]
        keys = [self.k_types, self.k_delayed, self.k_meta, self.k_signal]
        return int(await self._run("push", keys, args))

    async def remove(self, jobs: Iterable[tuple[uuid.UUID | str, str]]) -> int:
        args: list[Any] = [self.base]
        for job_id, job_type in jobs:
            args.extend((str(job_id), job_type))
        if len(args) == 1:
            return 0
        return int(await self._run("remove", [self.k_delayed, self.k_meta], args))

    async def request_cancel(self, job_id: uuid.UUID | str) -> None:
        """Tell whichever worker runs the job; the set covers a worker that missed the
        message (its next heartbeat sees it)."""
        with cluster_reachable():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.sadd(self.k_cancel, str(job_id))
                if self.sharded:
                    pipe.spublish(self.cancel_channel, str(job_id))
                else:
                    pipe.publish(self.cancel_channel, str(job_id))
                await pipe.execute()

    async def cancels_among(self, job_ids: Sequence[str]) -> list[str]:
        """Which of these jobs have a cancel request waiting. (SISMEMBER each, in one
        round trip: SMISMEMBER would need Redis 6.2.)"""
        if not job_ids:
            return []
        with cluster_reachable():
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.sismember(self.k_cancel, job_id)
                found = await pipe.execute()
        return [j for j, hit in zip(job_ids, found, strict=True) if hit]

    def cancel_requests(self) -> CancelSubscription:
        """``async with queue.cancel_requests() as feed: job_id = await feed.next(1.0)``"""
        return CancelSubscription(self)

    # --- worker side --------------------------------------------------------------------------

    async def claim(
        self, n: int, lease_seconds: float, types: Sequence[TypeLimit],
        promote_max: int = 1000, lock_token: str = "",
    ) -> tuple[list[tuple[str, str, int]], float | None]:
        """Claim up to ``n`` jobs of the given types (with their limits), taking each one's
        lock in the same step when ``lock_token`` is given. Returns ``[(id, type,
        ready_score)]`` and the seconds until more work may be due (None: nothing
        scheduled); ``self.held`` then names the ``(type, limit)`` pairs whose ready jobs a
        rate or concurrency limit kept waiting."""
        args: list[Any] = [self.base, n, int(lease_seconds * 1000), promote_max, lock_token]
        for lim in types:
            args.extend((lim.job_type, lim.concurrency, lim.rate, lim.per_ms))
        keys = [self.k_types, self.k_delayed, self.k_meta, self.k_lease, self.k_signal]
        flat, wake, held = await self._run("claim", keys, args)
        self.held = [(held[i], held[i + 1]) for i in range(0, len(held), 2)]
        jobs = [(flat[i], flat[i + 1], int(flat[i + 2])) for i in range(0, len(flat), 3)]
        return jobs, (None if int(wake) < 0 else int(wake) / 1000)

    async def wait_for_work(self, seconds: float) -> bool:
        """Block until a push signals new work or ``seconds`` pass (no busy polling)."""
        if seconds <= 0:
            return False
        got = await self.redis.blpop([self.k_signal], timeout=max(seconds, 0.001))
        return got is not None

    async def move(self, moves: Sequence[Move], lock_token: str = "") -> None:
        """Apply moves out of lease/reaped (``shared.core.lifecycle.Move``), releasing each
        job's lock when ``lock_token`` still holds it."""
        if not moves:
            return
        args: list[Any] = [self.base, lock_token]
        for m in moves:
            args.extend(m.args())
        keys = [self.k_types, self.k_delayed, self.k_meta, self.k_lease, self.k_reaped,
                self.k_cancel, self.k_signal]
        await self._run("move", keys, args)

    async def heartbeat(
        self, running: Sequence[tuple[str, str, bool]], lease_seconds: float,
        lock_token: str = "",
    ) -> tuple[list[str], list[str]]:
        """Extend leases (and, with ``lock_token``, locks) of ``(id, type,
        concurrency_limited)``. Returns the ids to cancel and the ids whose lock another
        worker holds now."""
        if not running:
            return [], []
        args: list[Any] = [self.base, int(lease_seconds * 1000), lock_token]
        for job_id, job_type, limited in running:
            args.extend((job_id, job_type, "1" if limited else "0"))
        cancelled, lost = await self._run("heartbeat", [self.k_lease, self.k_cancel], args)
        return list(cancelled), list(lost)

    # --- maintenance ---------------------------------------------------------------------------

    async def reap(self, limit: int = 1000, stale_seconds: float = 60.0) -> list[str]:
        out = await self._run("reap", [self.k_lease, self.k_reaped],
                              [limit, int(stale_seconds * 1000)])
        return list(dict.fromkeys(out))

    async def ensure(
        self, rows: Sequence[Any], lease_seconds: float
    ) -> tuple[int, int, int]:
        """Re-place active jobs Redis lost; rows carry id, job_type, status, priority,
        seq, run_at."""
        if not rows:
            return 0, 0, 0
        args: list[Any] = [self.base, int(lease_seconds * 1000)]
        for r in rows:
            args.extend((str(r["id"]), r["job_type"], r["status"],
                         ready_score(r["priority"], r["seq"]), epoch_ms(r["run_at"])))
        keys = [self.k_types, self.k_delayed, self.k_meta, self.k_lease, self.k_reaped]
        a, b, c = await self._run("ensure", keys, args)
        return int(a), int(b), int(c)

    async def depth(self) -> dict[str, Any]:
        out = await self._run("depth", [self.k_types, self.k_delayed, self.k_lease],
                              [self.base, SCALE])
        return {
            "ready_by_priority": {p + 1: int(out[p]) for p in range(10)},
            "delayed": int(out[10]),
            "leased": int(out[11]),
        }

    async def limit_usage(self, types: Sequence[TypeLimit]) -> dict[str, tuple[int, int]]:
        """``{type: (running, started within the rate window)}`` for the given types, as
        the claim script counts them (one round trip)."""
        if not types:
            return {}
        args: list[Any] = [self.base]
        for lim in types:
            args.extend((lim.job_type, lim.per_ms))
        out = await self._run("usage", [self.k_lease], args)
        return {lim.job_type: (int(out[2 * i]), int(out[2 * i + 1]))
                for i, lim in enumerate(types)}

    async def now_ms(self) -> int:
        """The clock the queue's scripts read: on a cluster, that of the master owning the
        queue's slot (a plain TIME would ask whichever node the client picks)."""
        return int(await self._run("now", [self.k_lease], []))


class CancelSubscription:
    """Cancel requests as they are published, for the worker's listener.

    One node: classic SUBSCRIBE. A cluster: sharded pub/sub (SSUBSCRIBE/SPUBLISH) on the
    channel ``{prefix:queue}:cancel``, which has the queue's hash tag, so the message stays
    on the shard that owns the queue instead of being broadcast over the whole cluster bus
    as a classic PUBLISH is. When the slot moves (resharding, failover) the server drops the
    subscription with an ``sunsubscribe``: :meth:`next` raises then, and the listener
    subscribes again; the cancel set covers what was published meanwhile (the listener
    reads it as it subscribes, and so does every heartbeat).
    """

    def __init__(self, queue: RedisQueue) -> None:
        self.queue = queue
        self._ps: PubSub | None = None

    async def __aenter__(self) -> CancelSubscription:
        redis = self.queue.redis
        if isinstance(redis, RedisCluster):
            # SSUBSCRIBE picks its node from the client's slot map, which redis-py updates
            # on a MOVED reply to a keyed command but not to SSUBSCRIBE: a stale map (the
            # slot just moved, which is why we are subscribing again) would send it to
            # the old master again and again. One keyed command of the queue's slot
            # brings the map up to date first (and fetches it, for a fresh client).
            await redis.exists(self.queue.k_cancel)
        ps = redis.pubsub()
        self._ps = ps
        try:
            with cluster_reachable():
                if isinstance(ps, ClusterPubSub):
                    await ps.ssubscribe(self.queue.cancel_channel)
                else:
                    await ps.subscribe(self.queue.cancel_channel)
        except BaseException:
            self._ps = None
            await ps.aclose()  # type: ignore[no-untyped-call]
            raise
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._ps is not None:
            ps, self._ps = self._ps, None
            await ps.aclose()  # type: ignore[no-untyped-call]

    async def next(self, seconds: float) -> str | None:
        """The next job id whose cancel was requested, or None after ``seconds``."""
        ps = self._ps
        if ps is None:
            raise RuntimeError("not subscribed: use `async with`")
        if isinstance(ps, ClusterPubSub):
            with cluster_reachable():
                msg = await ps.get_sharded_message(timeout=seconds)
        else:
            msg = await ps.get_message(timeout=seconds)
        if msg is None:
            return None
        kind = msg.get("type")
        if kind in ("message", "smessage"):
            return str(msg["data"])
        if kind in ("unsubscribe", "sunsubscribe"):
            raise RedisConnectionError(f"cancel subscription dropped by the server ({kind})")
        return None  # our own (s)subscribe confirmation


def wall_ms() -> int:
    return int(time.time() * 1000)
