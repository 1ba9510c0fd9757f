"""``python -m bench.soak``: the seed's workload for ten minutes with a schedule firing every
second and retention set to one minute; do the tables level off, and does every fire time
have exactly one job?

    uv run python -m bench.soak                        # 10 minutes
    uv run python -m bench.soak --minutes 2 --every 10  # a smoke run

One worker process (concurrency 10) runs the jobs; this process enqueues no-op jobs at the
seed's 12,500 an hour (3.5/s) and runs the scheduler tick every ``--tick`` seconds (as
``scripts/dev.sh`` does), with every retention age at ``--retention`` seconds. Every
``--every`` seconds it prints the tables' rows and sizes, and records which job each fire
time of the schedule got: retention deletes a finished run a minute after it ends, so the
samples see every run at least once. At the end, every whole second between the first and
the last fire time seen must have exactly one job.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.jobs import NOOP
from bench.report import publish
from bench.testbed import ROOT, Target, ensure_database, migrate, with_database
from bench.workloads import spec
from functions.scheduler.tick import tick
from shared.connections import Stores
from shared.core.schedule_service import ScheduleService
from shared.core.service import JobService
from shared.registry import load
from shared.schedule_schemas import JobTemplate, ScheduleCreate


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=12_500 / 3600, help="jobs/s enqueued")
    ap.add_argument("--retention", type=float, default=60.0, help="seconds, every status")
    ap.add_argument("--tick", type=float, default=5.0, help="seconds between ticks")
    ap.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    ap.add_argument("--database-url", default=with_database(os.environ.get(
        "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"), "ajs_bench"))
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL",
                                                          "redis://127.0.0.1:6379/0"))
    ap.add_argument("--private-postgres", action="store_true",
                    help="a throwaway PostgreSQL with its default settings (autovacuum on, "
                    "as on RDS) instead of --database-url")
    ap.add_argument("--append", help="append the report to this markdown file")
    return ap.parse_args(argv)


async def sample(db: Any) -> dict[str, Any]:
    row = await db.fetchrow("""
        SELECT (SELECT count(*) FROM jobs) AS jobs,
               (SELECT count(*) FROM job_transitions) AS history,
               (SELECT count(*) FROM job_count_deltas) AS deltas,
               pg_total_relation_size('jobs') AS jobs_bytes,
               pg_total_relation_size('job_transitions') AS history_bytes""")
    return dict(row)


async def run(a: argparse.Namespace) -> str:
    target = Target(a.database_url, a.redis_url, schema="ajs_soak", prefix="ajs_soak")
    await ensure_database(target.database_url)
    migrate(target)
    settings = target.settings(retention_completed_seconds=a.retention,
                               retention_cancelled_seconds=a.retention,
                               retention_failed_seconds=a.retention,
                               scheduler_tick_seconds=a.tick)
    stores = Stores(settings)
    registry = load(["bench.jobs"])
    service = JobService(stores, registry)
    db = await stores.pool()
    await db.execute("TRUNCATE jobs, job_transitions, job_counts, job_count_deltas, schedules")
    await stores.redis.flushdb()
    name = f"soak-{uuid.uuid4().hex[:6]}"
    await ScheduleService(service).create(ScheduleCreate(
        name=name, cron="* * * * * *", job=JobTemplate(job_type=NOOP, payload={"t_enq": -1})))
    out = tempfile.mkdtemp(prefix="ajs-soak-")
    worker = subprocess.Popen(  # noqa: ASYNC220 - once, before the clock starts
        [sys.executable, "-m", "worker"], cwd=ROOT, start_new_session=True,
        env=target.env(BENCH_OUT=out, BENCH_EXPECT="1000000000", AJS_WORKER_CONCURRENCY="10"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs: dict[datetime, set[uuid.UUID]] = {}
    samples: list[tuple[float, dict[str, Any]]] = []
    started = time.monotonic()
    end = started + a.minutes * 60

    async def enqueue() -> None:
        i = 0
        while time.monotonic() < end:
            delay = started + i / a.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await service.create(spec(time.time()))
            i += 1

    async def ticks() -> None:
        while time.monotonic() < end:
            await tick(stores, registry)
            await asyncio.sleep(a.tick)

    async def watch() -> None:
        while True:
            for r in await db.fetch("SELECT fire_time, id FROM jobs WHERE schedule_id IS NOT "
                                    "NULL"):
                runs.setdefault(r["fire_time"], set()).add(r["id"])
            samples.append((time.monotonic() - started, await sample(db)))
            s = samples[-1][1]
            print(f"  {samples[-1][0]:6.0f} s: jobs {s['jobs']:,} ({s['jobs_bytes'] / 2**20:.1f}"
                  f" MiB), history {s['history']:,} ({s['history_bytes'] / 2**20:.1f} MiB), "
                  f"count deltas {s['deltas']:,}", flush=True)
            if time.monotonic() >= end:
                return
            await asyncio.sleep(min(a.every, max(end - time.monotonic(), 0.0)))

    try:
        await asyncio.gather(enqueue(), ticks(), watch())
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 60)
        await stores.close()
    return report(a, samples, runs)


def report(a: argparse.Namespace, samples: list[tuple[float, dict[str, Any]]],
           runs: dict[datetime, set[uuid.UUID]]) -> str:
    times = sorted(runs)
    # Whole seconds from the first run seen to the last one that was due by the end.
    due_by = datetime.now(UTC) - timedelta(seconds=2)
    expected = []
    t = times[0]
    while t <= min(times[-1], due_by):
        expected.append(t)
        t += timedelta(seconds=1)
    missing = [t for t in expected if t not in runs]
    doubled = [t for t in times if len(runs[t]) > 1]
    lines = [f"### Soak: {a.minutes:g} min, a schedule every second, retention "
             f"{a.retention:g} s ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", "",
             f"Enqueued at {a.rate:.2f} jobs/s (12,500 an hour) beside the schedule; one worker "
             f"(concurrency 10); the tick every {a.tick:g} s.", "",
             "| after | jobs | jobs table | history rows | history table | count deltas |",
             "|---:|---:|---:|---:|---:|---:|"]
    for at, s in samples:
        lines.append(f"| {at:.0f} s | {s['jobs']:,} | {s['jobs_bytes'] / 2**20:.1f} MiB | "
                     f"{s['history']:,} | {s['history_bytes'] / 2**20:.1f} MiB | "
                     f"{s['deltas']:,} |")
    lines += ["", f"Fire times from {times[0]:%H:%M:%S} to {expected[-1]:%H:%M:%S}: "
              f"{len(expected):,} expected, {len(expected) - len(missing):,} with a job, "
              f"{len(missing)} without, {len(doubled)} with more than one.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    server = None
    if a.private_postgres:
        # The tests' throwaway server (imported by name: bench does not type-check tests).
        servers = importlib.import_module("tests.support.servers")
        server = servers.PostgresServer(fsync=True)
        a.database_url = server.url
    try:
        text = asyncio.run(run(a))
    finally:
        if server is not None:
            server.remove()
    publish(text, a.append)


if __name__ == "__main__":
    main()
