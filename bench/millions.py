"""``python -m bench.millions``: the scheduler with millions of finished jobs in its tables.

    uv run python -m bench.millions                  # 5,000,000 rows (about 10 min)
    uv run python -m bench.millions --rows 200000 --n 2000 --delete 50000   # a smoke run

Steps, on one schema (``ajs_millions``), printed as a markdown section (``--append FILE``):

1. empty tables: single enqueue (library) and drain at concurrency 10 of N jobs;
2. fill: ROWS finished jobs (COMPLETED 90 %, FAILED 5 %, CANCELLED 5 %, five job types,
   finished over the last 30 days) with two history rows each, written directly in SQL
   (triggers off; the counts are then recomputed as the migration does); table sizes;
3. reads through the API under uvicorn: ``GET /jobs/stats`` and ``GET /jobs`` with each
   filter, first page and a deep cursor (4/5 down the table), p50/p95 of repeated calls;
4. the same enqueue and drain as step 1, with the rows in place;
5. a retention pass deleting DELETE rows while jobs are enqueued at a fixed rate, against
   the same rate without it: enqueue p50/p99 and the deletion rate.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from bench.api_server import ApiServer
from bench.report import publish
from bench.testbed import (
    Target,
    add_store_arguments,
    ensure_database,
    fill_bytecode_cache,
    migrate,
)
from bench.workloads import Bench, Plan, pct, spec
from functions.api.deps import encode_cursor
from shared.connections import Stores
from shared.maintenance.retention import delete_expired
from shared.registry import load
from shared.store.api_keys import ApiKeyStore
from shared.store.jobs import JobStore

TYPES = ["noop", "email", "webhook", "data_processing", "report_generation"]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.millions", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--n", type=int, default=5000, help="jobs per enqueue/drain step")
    ap.add_argument("--delete", type=int, default=1_000_000, help="rows retention deletes")
    ap.add_argument("--rate", type=float, default=200.0, help="enqueues/s during retention")
    ap.add_argument("--seconds", type=float, default=20.0, help="each fixed-rate window")
    add_store_arguments(ap)
    return ap.parse_args(argv)


async def fill(db: Any, rows: int, say: Any) -> None:
    """ROWS finished jobs and their history, in chunks, triggers off, then the counts."""
    await db.execute("SET session_replication_role = replica")  # no triggers while filling
    chunk = 500_000
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        await db.execute("""
            WITH s AS (SELECT g, now() - ($2 - g) * (interval '30 days' / $2) AS at
                       FROM generate_series($1 + 1, $1 + $3) g)
            INSERT INTO jobs (queue, job_type, payload, priority, status, attempts,
                              max_retries, timeout_seconds, created_at, updated_at,
                              started_at, finished_at)
            SELECT 'default', ($4::text[])[1 + g % 5], '{"t_enq": 0}', 5,
                   CASE g % 20 WHEN 0 THEN 'FAILED' WHEN 1 THEN 'CANCELLED'
                               ELSE 'COMPLETED' END,
                   1, 3, 300, at, at, at, at
            FROM s""", start, rows, n, TYPES)
        say(f"  filled {start + n:,} jobs")
    await db.execute("""
        INSERT INTO job_transitions (job_id, from_status, to_status, attempt, worker, at)
        SELECT id, 'QUEUED', 'PROCESSING', 1, 'bench', started_at FROM jobs
        UNION ALL
        SELECT id, 'PROCESSING', status, 1, 'bench', finished_at FROM jobs""")
    await db.execute("RESET session_replication_role")
    await db.execute("DELETE FROM job_count_deltas")
    await db.execute("DELETE FROM job_counts")
    await db.execute("""
        INSERT INTO job_counts (namespace, job_type, status, n, retries)
        SELECT coalesce(namespace, ''), job_type, status, count(*),
               sum(greatest(attempts - 1, 0))
        FROM jobs GROUP BY 1, job_type, status""")
    for table in ("jobs", "job_transitions"):
        await db.execute(f"VACUUM ANALYZE {table}")
    await db.execute("CHECKPOINT")


async def sizes(db: Any) -> dict[str, float]:
    out = {}
    for table in ("jobs", "job_transitions"):
        out[table] = await db.fetchval("SELECT pg_total_relation_size($1)", table) / 2**20
    return out


async def timed_get(client: httpx.AsyncClient, path: str, params: dict[str, Any],
                    times: int = 30) -> dict[str, float]:
    took = []
    for _ in range(times):
        t0 = time.perf_counter()
        r = await client.get(path, params=params)
        took.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.text
    took.sort()
    return {"p50_ms": round(pct(took, 50), 2), "p95_ms": round(pct(took, 95), 2)}


async def reads(target: Target, db: Any, log: Any) -> dict[str, dict[str, float]]:
    deep = await db.fetchval("SELECT seq FROM jobs ORDER BY seq "
                             "OFFSET (SELECT count(*) / 5 FROM jobs) LIMIT 1")
    cursor = encode_cursor(deep)
    server = ApiServer(target, log)
    out: dict[str, dict[str, float]] = {}
    key, _ = await ApiKeyStore(db).create("bench-reads", ["jobs:read"], None)
    try:
        await server.ready()
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            out["stats"] = await timed_get(client, "/api/v1/jobs/stats", {})
            filters: dict[str, dict[str, Any]] = {
                "none": {}, "status=COMPLETED": {"status": "COMPLETED"},
                "status=FAILED": {"status": "FAILED"},
                "status=CANCELLED": {"status": "CANCELLED"},
                "job_type=webhook": {"job_type": "webhook"},
                "status=FAILED&job_type=email": {"status": "FAILED", "job_type": "email"}}
            for name, params in filters.items():
                out[f"list {name}"] = await timed_get(client, "/api/v1/jobs", params)
                out[f"list {name}, deep cursor"] = await timed_get(
                    client, "/api/v1/jobs", {**params, "cursor": cursor})
    finally:
        await server.stop()
    return out


async def fixed_rate(bench: Bench, rate: float, seconds: float) -> dict[str, float]:
    took = []
    async with bench.client() as service:
        t0 = time.monotonic()
        for i in range(int(rate * seconds)):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            s = time.perf_counter()
            await service.create(spec(time.time()))
            took.append((time.perf_counter() - s) * 1000)
    took.sort()
    return {"p50_ms": round(pct(took, 50), 2), "p99_ms": round(pct(took, 99), 2)}


async def retention_under_load(bench: Bench, target: Target, db: Any, delete: int,
                               rate: float, seconds: float) -> dict[str, Any]:
    quiet = await fixed_rate(bench, rate, seconds)
    # The oldest `delete` finished jobs become due: retention keeps a span whose start is
    # the finish time of the first row it must keep.
    keep_from = await db.fetchval("SELECT finished_at FROM jobs ORDER BY finished_at "
                                  "OFFSET $1 LIMIT 1", delete)
    age = (datetime.now(UTC) - keep_from).total_seconds()
    settings = target.settings(retention_completed_seconds=age, retention_failed_seconds=age,
                               retention_cancelled_seconds=age, retention_max_per_tick=delete,
                               retention_max_seconds=seconds, idempotency_window_seconds=0)
    stores = Stores(settings)
    try:
        store = JobStore(await stores.pool())
        t0 = time.perf_counter()
        task = asyncio.create_task(delete_expired(store, settings, load([])))
        loaded = await fixed_rate(bench, rate, seconds)
        deleted = await task
        took = time.perf_counter() - t0
    finally:
        await stores.close()
    return {"enqueue_quiet": quiet, "enqueue_during_retention": loaded,
            "share": settings.retention_max_share,
            "deleted": deleted.total, "delete_s": round(took, 1),
            "deleted_per_s": round(deleted.total / took)}


async def run(args: argparse.Namespace) -> str:
    target = Target(args.database_url, args.redis_url, schema="ajs_millions",
                    prefix="ajs_millions")
    await ensure_database(target.database_url)
    migrate(target)
    fill_bytecode_cache(target)
    log = open("/tmp/ajs-millions.log", "ab")  # noqa: SIM115, ASYNC230 - lives for the run

    def say(text: str) -> None:
        print(text, flush=True)

    bench = Bench(target, Plan(n=args.n), log, say)
    await bench.bed.open()
    try:
        await bench.bed.wipe()
        say("== empty tables")
        empty = {"enqueue": await bench.enqueue_single(args.n),
                 "drain": await bench.drain(10, args.n)}
        say(f"  {empty}")
        say(f"== fill {args.rows:,} finished jobs")
        t0 = time.perf_counter()
        await fill(bench.bed.db, args.rows, say)
        fill_s = time.perf_counter() - t0
        size = await sizes(bench.bed.db)
        say(f"  {size} in {fill_s:.0f} s")
        say("== reads")
        read = await reads(target, bench.bed.db, log)
        for name, figures in read.items():
            say(f"  {name}: {figures}")
        say("== with the rows in place")
        full = {"enqueue": await bench.enqueue_single(args.n),
                "drain": await bench.drain(10, args.n)}
        say(f"  {full}")
        say(f"== retention deleting {args.delete:,} rows under {args.rate:g} enqueues/s")
        ret = await retention_under_load(bench, target, bench.bed.db, args.delete, args.rate,
                                         args.seconds)
        say(f"  {ret}")
    finally:
        await bench.bed.close()
        log.close()
    return report(args, empty, full, size, read, ret)


def report(args: argparse.Namespace, empty: dict[str, Any], full: dict[str, Any],
           size: dict[str, float], read: dict[str, dict[str, float]], ret: dict[str, Any]
           ) -> str:
    per_million = {t: round(mb * 1_000_000 / args.rows) for t, mb in size.items()}
    lines = [f"### Millions of rows: {args.rows:,} finished jobs "
             f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", "",
             "| step | empty tables | with the rows | change |", "|---|---:|---:|---:|"]
    for step in ("enqueue", "drain"):
        a, b = empty[step]["jobs_per_s"], full[step]["jobs_per_s"]
        lines.append(f"| {step} jobs/s | {a:,} | {b:,} | {100 * (b - a) / a:+.0f} % |")
    lines += ["", "| read (through the API) | p50 ms | p95 ms |", "|---|---:|---:|"]
    lines += [f"| {name} | {f['p50_ms']} | {f['p95_ms']} |" for name, f in read.items()]
    q, d = ret["enqueue_quiet"], ret["enqueue_during_retention"]
    lines += ["", f"Retention, paced at its default share ({ret['share']:.0%} of the time "
              f"deleting), deleted {ret['deleted']:,} jobs (and their history) in the "
              f"{ret['delete_s']} s window ({ret['deleted_per_s']:,}/s; {args.delete:,} would "
              f"take {args.delete / max(ret['deleted_per_s'], 1) / 60:.0f} min over several "
              f"ticks) while jobs were enqueued at {args.rate:g}/s: enqueue p50 / p99 "
              f"{d['p50_ms']} / {d['p99_ms']} ms, against {q['p50_ms']} / {q['p99_ms']} ms "
              f"without it ({100 * (d['p99_ms'] - q['p99_ms']) / q['p99_ms']:+.0f} % at p99).",
              "",
              f"Disk: jobs {size['jobs']:,.0f} MiB, history {size['job_transitions']:,.0f} MiB "
              f"(per million jobs: {per_million['jobs']:,} MiB and "
              f"{per_million['job_transitions']:,} MiB, indexes included).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    text = asyncio.run(run(args))
    publish(text, args.append)


if __name__ == "__main__":
    main()
