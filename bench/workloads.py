"""The measured steps, measured the way the peer harness measures its peers.

- enqueue, one at a time: N awaited calls, one after the other, from one asyncio client;
  through the library (``JobService.create``) and over HTTP to the API under uvicorn.
- batch enqueue: N jobs in calls of 1,000 (``JobService.create_many``; ``POST
  /api/v1/jobs/batch``).
- drain: the N queued jobs left by an enqueue step are run by a fresh ``python -m worker``
  at concurrency C; throughput = N / (start of the last job - start of the first job),
  so start-up is excluded and reported apart. We also wait until PostgreSQL shows every
  job finished and report that rate too, because a worker that starts jobs quickly but
  settles them late would otherwise look better than it is.
- pickup latency: a warmed-up worker (concurrency 10); jobs enqueued open-loop at RATE/s
  for SECONDS s through the library; latency = the job's start time minus the client's
  ``time.time()`` right before the enqueue call (so it includes the enqueue's commit).
- scheduled lateness: RATE*SECONDS jobs made ahead of time with ``scheduled_at`` spread so
  that RATE/s fall due, run by a warmed-up worker (concurrency 10); lateness = the job's
  start time minus its ``scheduled_at``.

Every step starts from wiped stores and ends with its cost: commits, Redis commands and
CPU (see :mod:`bench.counters`).
"""

from __future__ import annotations

import asyncio
import math
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import httpx

from bench import stages
from bench.api_server import ApiServer
from bench.counters import cost, process_cpu_s, snapshot
from bench.jobs import NOOP
from bench.testbed import JOB_MODULES, Target, Testbed
from bench.worker_process import WorkerProcess
from shared.api_schemas import JobCreate
from shared.connections import Stores
from shared.core.service import JobService
from shared.registry import load
from shared.store.api_keys import ApiKeyStore

CHUNK = 1000
UNFINISHED = ("PENDING", "QUEUED", "PROCESSING", "RETRYING")


@dataclass
class Plan:
    n: int = 10_000
    http_n: int = 10_000
    concurrencies: tuple[int, ...] = (10, 100)
    rate: float = 200.0
    seconds: float = 15.0
    drain_timeout: float = 300.0
    profile_dir: str | None = None  # py-spy the drain workers, raw stacks go here
    skip: frozenset[str] = frozenset()  # of: single, batch, http, latency, scheduled


def spec(t_enq: float) -> JobCreate:
    return JobCreate(job_type=NOOP, payload={"t_enq": t_enq})


def body(t_enq: float) -> dict[str, Any]:
    return {"job_type": NOOP, "payload": {"t_enq": t_enq}}


def cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def pct(sorted_values: list[float], p: float) -> float:
    """Nearest rank, as the peer harness computes it."""
    k = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


class Bench:
    def __init__(self, target: Target, plan: Plan, log: IO[bytes],
                 say: Callable[[str], None]) -> None:
        self.target = target
        self.plan = plan
        self.log = log
        self.say = say
        self.bed = Testbed(target)
        self.results: dict[str, Any] = {}

    # --- plumbing ------------------------------------------------------------------------

    @asynccontextmanager
    async def client(self) -> AsyncIterator[JobService]:
        """A library client with its own pools, warmed by one probe job (not counted).
        Closed before the step's closing snapshot, so its PostgreSQL backends flush their
        statistics."""
        stores = Stores(self.target.settings())
        service = JobService(stores, load(JOB_MODULES))
        try:
            await service.create(spec(-1.0))
            yield service
        finally:
            await stores.close()

    async def measured(self, name: str, n: int, step: Callable[[], Awaitable[dict[str, Any]]]
                       ) -> dict[str, Any]:
        before = await snapshot(self.bed)
        cpu0 = cpu_self()
        out = await step()
        spent = cost(before, await snapshot(self.bed))
        out["jobs"] = n
        out["driver_cpu_s"] = round(cpu_self() - cpu0, 2)
        out["cost"] = spent.as_dict(n)
        self.results[name] = out
        self.say(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in out.items()
                                            if k not in ("cost", "latencies")))
        per = spent.per_job(n)
        self.say(f"    per job: {per.get('commits')} PG transactions, {per.get('wal_syncs')} WAL "
                 f"flushes, {per.get('redis_calls')} Redis "
                 f"calls ({per.get('redis_cmds')} commands incl. in scripts); box busy "
                 f"{spent.busy_cores:.2f} cores, load {spent.load1}")
        return out

    # --- enqueue ---------------------------------------------------------------------------

    async def enqueue_single(self, n: int) -> dict[str, Any]:
        async with self.client() as service:
            t0 = time.perf_counter()
            for _ in range(n):
                await service.create(spec(time.time()))
            took = time.perf_counter() - t0
        return {"jobs_per_s": round(n / took, 1), "seconds": round(took, 2)}

    async def enqueue_batch(self, n: int) -> dict[str, Any]:
        async with self.client() as service:
            t0 = time.perf_counter()
            left = n
            while left:
                k = min(CHUNK, left)
                now = time.time()
                await service.create_many([spec(now) for _ in range(k)])
                left -= k
            took = time.perf_counter() - t0
        return {"jobs_per_s": round(n / took, 1), "seconds": round(took, 2)}

    async def http_single(self, n: int) -> dict[str, Any]:
        return await self._http(n, batch=False)

    async def http_batch(self, n: int) -> dict[str, Any]:
        return await self._http(n, batch=True)

    async def _http(self, n: int, *, batch: bool) -> dict[str, Any]:
        profile = (f"{self.plan.profile_dir}/api_{'batch' if batch else 'single'}.txt"
                   if self.plan.profile_dir else None)
        server = ApiServer(self.target, self.log, profile=profile)
        try:
            await server.ready()
            server_cpu0 = process_cpu_s(server.pid)
            # With a key, as in production: its lookup is cached, so it is measured too.
            assert self.bed.pg is not None
            key, _ = await ApiKeyStore(self.bed.pg).create("bench", ["jobs:write"], None)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60.0,
                                         headers={"Authorization": f"Bearer {key}"}
                                         ) as client:
                probe = await client.post("/api/v1/jobs", json=body(-1.0))
                if probe.status_code != 201:
                    raise RuntimeError(f"probe create failed: {probe.status_code} {probe.text}")
                bad = 0
                t0 = time.perf_counter()
                if batch:
                    left = n
                    while left:
                        k = min(CHUNK, left)
                        now = time.time()
                        r = await client.post("/api/v1/jobs/batch",
                                              json={"jobs": [body(now) for _ in range(k)]})
                        bad += k if r.status_code != 201 else 0
                        left -= k
                else:
                    for _ in range(n):
                        r = await client.post("/api/v1/jobs", json=body(time.time()))
                        bad += r.status_code != 201
                took = time.perf_counter() - t0
            server_cpu = process_cpu_s(server.pid) - server_cpu0
        finally:
            await server.stop()
        if bad:
            raise RuntimeError(f"{bad} of {n} HTTP creates failed")
        return {"jobs_per_s": round(n / took, 1), "seconds": round(took, 2),
                "server_cpu_s": round(server_cpu, 2)}

    # --- drain -------------------------------------------------------------------------------

    async def drain(self, concurrency: int, n: int) -> dict[str, Any]:
        profile = (f"{self.plan.profile_dir}/drain{concurrency}.txt"
                   if self.plan.profile_dir else None)
        w = WorkerProcess(self.target, concurrency, n, "drain", self.log, profile=profile)
        try:
            await w.wait_for("done", self.plan.drain_timeout)
            done = w.done()
            t_settled = await self._settled(self.plan.drain_timeout)
            pg_cpu = await self._backend_cpu_s()
        finally:
            ended = await w.stop()
        span = done["t_last"] - done["t_first"]
        return {"jobs_per_s": round(n / span, 1), "drain_s": round(span, 3),
                "settled_per_s": round(n / (t_settled - done["t_first"]), 1),
                "startup_s": round(done["t_first"] - w.t_spawn, 3),
                "rss_mb": ended.rss_mb, "worker_cpu_s": ended.cpu_s,
                "worker_cpu_ms_per_job": round(
                    1000 * (done["cpu_last"] - done["cpu_first"]) / max(n - 1, 1), 3),
                "pg_backends_cpu_s": round(pg_cpu, 2)}

    async def _backend_cpu_s(self) -> float:
        """CPU time of the PostgreSQL backends serving the worker (all of our database's
        sessions but the testbed's own), read before the worker closes them."""
        pids = await self.bed.db.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()")
        return sum(process_cpu_s(r["pid"]) for r in pids)

    async def _settled(self, within: float) -> float:
        """Wall time at which PostgreSQL shows no unfinished job (20 ms polls)."""
        deadline = time.monotonic() + within
        while True:
            left = await self.bed.db.fetchval(
                "SELECT count(*) FROM jobs WHERE status = ANY($1::text[])", list(UNFINISHED))
            now = time.time()
            if left == 0:
                return now
            if time.monotonic() > deadline:
                raise TimeoutError(f"{left} jobs still unfinished after {within:g} s")
            await asyncio.sleep(0.02)

    # --- pickup latency ------------------------------------------------------------------------

    async def latency(self) -> dict[str, Any]:
        rate, seconds = self.plan.rate, self.plan.seconds
        total = int(rate * seconds)
        w = WorkerProcess(self.target, 10, total, "latency", self.log)
        try:
            async with self.client() as service:
                await _until_ready(w, service)  # then let it settle
                await asyncio.sleep(0.5)
                behind = 0.0
                enqueue: list[float] = []  # each create's own duration (its commit): ms
                returned: dict[float, float] = {}  # t_enq -> when its create returned
                t0 = time.monotonic()
                for i in range(total):
                    delay = t0 + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    else:
                        behind = max(behind, -delay)
                    t_enq = time.time()
                    await service.create(spec(t_enq))
                    t_ret = time.time()
                    returned[t_enq] = t_ret
                    enqueue.append((t_ret - t_enq) * 1000)
                sent_s = time.monotonic() - t0
            await w.wait_for("done", 60)
            lat = sorted(x * 1000 for x in w.latencies())
            if stages.ENABLED:  # the stage profile (bench/stages.py), printed as is
                await w.wait_for("stages.json", 10)
                self.say(stages.summarise(stages.load(w.path("stages.json")), returned, pct))
        finally:
            ended = await w.stop()
        return {"n": len(lat), "p50_ms": round(pct(lat, 50), 2), "p95_ms": round(pct(lat, 95), 2),
                "p99_ms": round(pct(lat, 99), 2), "max_ms": round(lat[-1], 2),
                "mean_ms": round(sum(lat) / len(lat), 2),
                "achieved_rate": round(total / sent_s, 1), "max_behind_ms": round(behind * 1000, 1),
                # The part of the pickup spent in the enqueue call itself (the client's
                # INSERT commit and Redis push): the worker's share is the rest.
                "enqueue_p50_ms": round(pct(sorted(enqueue), 50), 2),
                "enqueue_p99_ms": round(pct(sorted(enqueue), 99), 2),
                "enqueue_max_ms": round(max(enqueue), 2),
                "rss_mb": ended.rss_mb, "worker_cpu_s": ended.cpu_s}

    # --- scheduled jobs ------------------------------------------------------------------------

    async def scheduled(self) -> dict[str, Any]:
        """Jobs due at RATE/s for SECONDS s, made ahead of time (in batches, within the
        lookahead, so they wait in Redis's delayed set as scheduled jobs do); lateness =
        the handler's start minus the job's ``scheduled_at`` (the payload's ``t_enq``)."""
        rate, seconds = self.plan.rate, self.plan.seconds
        total = int(rate * seconds)
        w = WorkerProcess(self.target, 10, total, "latency", self.log)
        try:
            async with self.client() as service:
                await _until_ready(w, service)
                # Due from 2 s from now: every job is made before the first falls due.
                first = time.time() + 2.0
                due = [first + i / rate for i in range(total)]
                for at in range(0, total, CHUNK):
                    await service.create_many([
                        JobCreate(job_type=NOOP, payload={"t_enq": t},
                                  scheduled_at=datetime.fromtimestamp(t, UTC))
                        for t in due[at:at + CHUNK]])
                made_s = time.time() - (first - 2.0)
            await w.wait_for("done", seconds + 60)
            late = sorted(x * 1000 for x in w.latencies())
        finally:
            ended = await w.stop()
        return {"n": len(late), "p50_ms": round(pct(late, 50), 2),
                "p95_ms": round(pct(late, 95), 2), "p99_ms": round(pct(late, 99), 2),
                "max_ms": round(late[-1], 2), "min_ms": round(late[0], 2),
                "rate": rate, "made_in_s": round(made_s, 2),
                "rss_mb": ended.rss_mb, "worker_cpu_s": ended.cpu_s}

    # --- the whole sequence ----------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        p, bed = self.plan, self.bed
        concs = list(p.concurrencies)
        # Library single enqueue fills the queue for the first drain, the batch step for
        # the next; any further drain gets an untimed batch refill. ``skip`` drops steps.
        single = "single" not in p.skip
        batch = "batch" not in p.skip
        if single:
            await bed.wipe()
            await self.measured("enqueue_single", p.n, lambda: self.enqueue_single(p.n))
        for i, c in enumerate(concs):
            if i or not single:
                await bed.wipe()
                if batch and "enqueue_batch" not in self.results:
                    await self.measured("enqueue_batch", p.n, lambda: self.enqueue_batch(p.n))
                else:
                    await self.enqueue_batch(p.n)
            await self.measured(f"drain_{c}", p.n, self._drainer(c, p.n))
        if batch and "enqueue_batch" not in self.results:
            await bed.wipe()
            await self.measured("enqueue_batch", p.n, lambda: self.enqueue_batch(p.n))
        if "http" not in p.skip and p.http_n:
            await bed.wipe()
            await self.measured("http_single", p.http_n, lambda: self.http_single(p.http_n))
            await bed.wipe()
            await self.measured("http_batch", p.n, lambda: self.http_batch(p.n))
        if "latency" not in p.skip and p.seconds > 0:
            await bed.wipe()
            total = int(p.rate * p.seconds)
            await self.measured("latency", total, self.latency)
        if "scheduled" not in p.skip and p.seconds > 0:
            await bed.wipe()
            total = int(p.rate * p.seconds)
            await self.measured("scheduled", total, self.scheduled)
        await bed.wipe()
        runs = [v for v in self.results.values() if "rss_mb" in v]
        self.results["peak_rss_mb"] = max((v["rss_mb"] for v in runs), default=None)
        return self.results

    def _drainer(self, concurrency: int, n: int) -> Callable[[], Awaitable[dict[str, Any]]]:
        return lambda: self.drain(concurrency, n)


async def _until_ready(w: WorkerProcess, service: Any) -> None:
    """Send probe jobs until the worker has run one (it is warm), for at most 60 s."""
    deadline = time.monotonic() + 60
    while True:
        try:
            await w.wait_for("ready", 0.1)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
            await service.create(spec(-1.0))
