"""``python -m bench.scaleout``: does a second worker process drain faster, and what
limits it (issue 12).

    uv run python -m bench.scaleout --peer-servers --rounds 2        # conc 10 and 100
    uv run python -m bench.scaleout --peer-servers --conc 100 --n 30000

For each total concurrency C, three configurations, interleaved round by round: one
``python -m worker`` at C, two at C/2 each (the same slots split), two at C each. The
workers are started on an empty queue and warmed with probe jobs (so their start-up is
outside the measurement), then N no-op jobs are enqueued in one ``create_many`` call:
PostgreSQL's insert commits first and one push makes them all ready at once.

Measured over the drain (from the first job's start, seen by the driver, to the moment
PostgreSQL shows every job finished):

- jobs/s: N over the jobs' own span in PostgreSQL, ``max(finished_at) -
  min(started_at)`` (the server's clock; the same for one or two workers);
- CPU seconds per 1,000 jobs of each process group, from ``/proc`` before and after: each
  worker, the PostgreSQL backends serving the workers (summed), the rest of that
  PostgreSQL server (WAL writer, checkpointer, our polling session, other databases),
  redis-server, and whatever else ran on the box;
- the box's idle share (``/proc/stat``), and what the workers' backends waited on: the
  driver samples ``pg_stat_activity`` every 50 ms (a lock wait there would mean the
  workers contend on rows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bench.__main__ import PEER_SERVERS, open_log
from bench.counters import CLK_TCK, load1, process_cpu_s
from bench.testbed import (
    BYTECODE_CACHE,
    JOB_MODULES,
    Target,
    Testbed,
    add_store_arguments,
    ensure_database,
    fill_bytecode_cache,
    migrate,
)
from bench.worker_process import WorkerProcess
from bench.workloads import UNFINISHED, spec
from shared.connections import Stores
from shared.core.service import JobService
from shared.registry import load

NEVER = 10**9  # BENCH_EXPECT: the recorder never writes "done"; the driver asks PostgreSQL


@dataclass(frozen=True)
class Config:
    workers: int
    concurrency: int  # each

    @property
    def name(self) -> str:
        return f"{self.workers}x{self.concurrency}"


@dataclass
class CpuSnap:
    """Cumulative CPU seconds of every process we account for, and the box's jiffies."""
    procs: dict[int, float]
    busy: float
    idle: float
    wall: float = field(default_factory=time.monotonic)


def configs(concurrency: int) -> list[Config]:
    return [Config(1, concurrency), Config(2, concurrency // 2), Config(2, concurrency)]


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _children(parent: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if _parent(int(entry)) == parent:
                    out.append(int(entry))
            except OSError:
                continue
    return out


def _box() -> tuple[float, float]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK, (v[3] + v[4]) / CLK_TCK


def cpu_snap(pids: list[int]) -> CpuSnap:
    busy, idle = _box()
    return CpuSnap({p: process_cpu_s(p) for p in pids}, busy, idle)


class Scaleout:
    def __init__(self, target: Target, n: int, log: Any) -> None:
        self.target = target
        self.n = n
        self.log = log
        self.bed = Testbed(target)
        self.postmaster = 0
        self.redis_pid = 0

    async def locate_servers(self) -> None:
        self.postmaster = _parent(await self.bed.db.fetchval("SELECT pg_backend_pid()"))
        self.redis_pid = int((await self.bed.r.info("server"))["process_id"])

    async def one(self, cfg: Config) -> dict[str, Any]:
        await self.bed.wipe()
        settings = self.target.settings(batch_max_jobs=self.n)
        stores = Stores(settings)
        service = JobService(stores, load(JOB_MODULES))
        workers: list[WorkerProcess] = []
        try:
            await service.create(spec(-1.0))  # the driver's own connections, opened now
            driver_backends = set(await self._our_backends())
            workers = [WorkerProcess(self.target, cfg.concurrency, NEVER, "drain", self.log)
                       for _ in range(cfg.workers)]
            await self._warm(workers, service)
            await self._until_finished(60)
            t_fill = await self.bed.db.fetchval("SELECT clock_timestamp()")
            first_start = asyncio.ensure_future(self._first_start(t_fill))
            await service.create_many([spec(time.time()) for _ in range(self.n)])
            await first_start
            pg = _children(self.postmaster)
            tracked = [w.pid for w in workers] + pg + [self.redis_pid]
            before = cpu_snap(tracked)
            waits = asyncio.ensure_future(self._sample_waits(driver_backends))
            await self._until_finished(300)
            after = cpu_snap(tracked + [p for p in _children(self.postmaster)
                                        if p not in tracked])
            waits.cancel()
            seen_waits: Counter[str] = await _result(waits)
            worker_backends = set(await self._our_backends()) - driver_backends
            span = await self.bed.db.fetchrow(
                "SELECT extract(epoch FROM max(finished_at) - min(started_at)) AS s, count(*) "
                "FROM jobs WHERE created_at >= $1", t_fill)
        finally:
            ends = [await w.stop() for w in workers]
            await stores.close()
        assert span is not None and span["count"] == self.n, span
        return self._figures(cfg, workers, before, after, worker_backends, float(span["s"]),
                             seen_waits, [e.rss_mb for e in ends])

    def _figures(self, cfg: Config, workers: list[WorkerProcess], before: CpuSnap,
                 after: CpuSnap, worker_backends: set[int], span: float,
                 waits: Counter[str], rss: list[float]) -> dict[str, Any]:
        def used(pid: int) -> float:
            return after.procs.get(pid, 0.0) - before.procs.get(pid, 0.0)

        per_k = 1000 / self.n
        wall = after.wall - before.wall
        worker_cpu = [used(w.pid) for w in workers]
        pg_pids = [p for p in after.procs if p not in {w.pid for w in workers}
                   and p != self.redis_pid]
        backends = sum(used(p) for p in pg_pids if p in worker_backends)
        pg_rest = sum(used(p) for p in pg_pids if p not in worker_backends)
        redis = used(self.redis_pid)
        box_busy = after.busy - before.busy
        box_idle = after.idle - before.idle
        other = box_busy - sum(worker_cpu) - backends - pg_rest - redis
        total = box_busy + box_idle
        return {
            "config": cfg.name, "jobs_per_s": round(self.n / span, 1),
            "span_s": round(span, 3), "window_s": round(wall, 3),
            "cpu_s_per_1k": {
                "workers": [round(c * per_k, 3) for c in worker_cpu],
                "workers_sum": round(sum(worker_cpu) * per_k, 3),
                "pg_backends": round(backends * per_k, 3),
                "pg_rest": round(pg_rest * per_k, 3),
                "redis": round(redis * per_k, 3),
                "other": round(other * per_k, 3),
                "box_busy": round(box_busy * per_k, 3),
            },
            "cores": {"workers": round(sum(worker_cpu) / wall, 2),
                      "pg_backends": round(backends / wall, 2),
                      "redis": round(redis / wall, 2), "box_busy": round(box_busy / wall, 2)},
            "box_idle_pct": round(100 * box_idle / total, 1) if total > 0 else None,
            "pg_waits": dict(waits.most_common(8)), "rss_mb": rss, "load1": load1(),
        }

    async def _our_backends(self) -> list[int]:
        rows = await self.bed.db.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()")
        return [r["pid"] for r in rows]

    async def _warm(self, workers: list[WorkerProcess], service: JobService) -> None:
        """Probe jobs until every worker has run one (they land on whichever claims)."""
        deadline = time.monotonic() + 60
        while not all(w.has("ready") for w in workers):
            for w in workers:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {w.proc.returncode} (see log)")
            if time.monotonic() > deadline:
                raise TimeoutError("workers not warm after 60 s")
            await service.create(spec(-1.0))
            await asyncio.sleep(0.02)

    async def _first_start(self, since: Any) -> None:
        """Returns once some job enqueued after ``since`` has started (2 ms polls of the
        Redis ready queue would need its key layout; PostgreSQL's status is enough)."""
        started = False
        while not started:
            await asyncio.sleep(0.002)
            started = await self.bed.db.fetchval(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE created_at >= $1 "
                "AND status <> 'QUEUED')", since)

    async def _until_finished(self, within: float) -> None:
        deadline = time.monotonic() + within
        while await self.bed.db.fetchval(
                "SELECT count(*) FROM jobs WHERE status = ANY($1::text[])", list(UNFINISHED)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs unfinished after {within:g} s")
            await asyncio.sleep(0.02)

    async def _sample_waits(self, exclude: set[int]) -> Counter[str]:
        """What the workers' backends are doing, every 50 ms: 'active' with no wait is on
        a core (or waiting for one); 'Lock:...' would be row or tuple lock contention."""
        seen: Counter[str] = Counter()
        conn = await asyncpg.connect(self.target.database_url)  # the testbed's is busy
        try:
            while True:
                rows = await conn.fetch(
                    "SELECT pid, state, wait_event_type, wait_event FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
                for r in rows:
                    if r["pid"] in exclude:
                        continue
                    if r["state"] == "active":
                        seen[f"{r['wait_event_type']}:{r['wait_event']}"
                             if r["wait_event_type"] else "active (on CPU)"] += 1
                    else:
                        seen[str(r["state"])] += 1
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            return seen
        finally:
            await conn.close()


async def _result(task: asyncio.Future[Counter[str]]) -> Counter[str]:
    try:
        return await task
    except asyncio.CancelledError:
        return Counter()


def render(rows: list[dict[str, Any]]) -> str:
    """Medians per configuration (each figure's own median over the rounds)."""
    out = ["| config | jobs/s | worker CPU s/1k | PG backends s/1k | PG rest s/1k "
           "| Redis s/1k | other s/1k | box busy s/1k | box idle % | rounds (jobs/s) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    names = list(dict.fromkeys(r["config"] for r in rows))
    for name in names:
        mine = [r for r in rows if r["config"] == name]

        rate = statistics.median(r["jobs_per_s"] for r in mine)
        cpu = [f"{statistics.median(r['cpu_s_per_1k'][k] for r in mine):.3f}"
               for k in ("workers_sum", "pg_backends", "pg_rest", "redis", "other", "box_busy")]
        idle = statistics.median(r["box_idle_pct"] for r in mine)
        rounds = " / ".join(f"{r['jobs_per_s']:,.0f}" for r in mine)
        out.append(f"| {name} | {rate:,.0f} | {' | '.join(cpu)} | {idle:.1f} | {rounds} |")
    return "\n".join(out)


async def run(a: argparse.Namespace) -> int:
    os.makedirs(a.out, exist_ok=True)
    target = Target(a.database_url, a.redis_url, a.schema, a.prefix,
                    bytecode_cache=BYTECODE_CACHE)
    await ensure_database(target.database_url)
    concs = [int(c) for c in a.conc.split(",") if c.strip()]
    rows: list[dict[str, Any]] = []
    with open_log(os.path.join(a.out, "worker.log")) as log:
        s = Scaleout(target, a.n, log)
        await s.bed.open()
        try:
            await asyncio.to_thread(migrate, target)
            await asyncio.to_thread(fill_bytecode_cache, target)
            if await s.bed.synchronous_commit() != "on":
                print("refusing to measure: synchronous_commit must be on")
                return 2
            await s.locate_servers()
            print(f"N={a.n:,}, concurrencies {concs}, {a.rounds} rounds; load {load1()}")
            for rnd in range(a.rounds):
                order = [cfg for c in concs for cfg in configs(c)]
                for cfg in (order if rnd % 2 == 0 else order[::-1]):
                    row = await s.one(cfg)
                    row["round"] = rnd + 1
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            await s.bed.wipe()
        finally:
            await s.bed.close()
    table = render(rows)
    save(a, rows, table)
    print("\n" + table)
    return 0


def save(a: argparse.Namespace, rows: list[dict[str, Any]], table: str) -> None:
    with open(os.path.join(a.out, "raw.json"), "w") as f:
        json.dump(rows, f, indent=1)
    if a.append:
        with open(a.append, "a") as f:
            f.write("\n" + table + "\n")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_store_arguments(ap)
    ap.add_argument("--n", type=int, default=10_000, help="jobs per drain (10,000)")
    ap.add_argument("--conc", default="10,100", help="total concurrencies (10,100)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (2)")
    ap.add_argument("--schema", default="ajs_scaleout")
    ap.add_argument("--prefix", default="ajs_scaleout")
    ap.add_argument("--peer-servers", action="store_true",
                    help="use ../shared/peers/servers.sh's PostgreSQL 5439 and Redis 6390")
    ap.add_argument("--out", help="directory for raw.json and the worker log")
    a = ap.parse_args(argv)
    if a.peer_servers:
        a.database_url, a.redis_url = PEER_SERVERS
    a.out = a.out or time.strftime("/tmp/ajs-bench/scaleout-%Y%m%d-%H%M%S")
    return a


def main(argv: list[str] | None = None) -> None:
    raise SystemExit(asyncio.run(run(parse(argv))))


if __name__ == "__main__":
    main()
