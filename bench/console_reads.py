"""``python -m bench.console_reads``: the console's reads with a million jobs in the store.

    uv run python -m bench.console_reads                 # 1,000,000 jobs (a few minutes)
    uv run python -m bench.console_reads --rows 100000   # a smoke run

On its own schema (``ajs_console``): ROWS finished jobs as ``bench.millions`` fills them
(COMPLETED 90 %, FAILED 5 %, CANCELLED 5 %, five types, over 30 days), one in ten of them
in one of ten namespaces, and ``job_activity`` full for its two days (every minute, type
and namespace, and all namespaces together: the most it holds for that fleet). Then each
read the console makes, through the same Python functions the API calls: the median wall
time of repeated calls, and PostgreSQL's own execution time of each statement (EXPLAIN
ANALYZE) with the index it used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.millions import TYPES, fill
from bench.report import publish
from bench.testbed import Target, ensure_database, migrate, with_database
from shared.core.status import Status
from shared.store.insights import Window, activity, dead_letter_groups
from shared.store.jobs import JobStore, ListFilter

NAMESPACES = [f"tenant{i}" for i in range(10)]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.console_reads", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--times", type=int, default=15, help="calls per read (median)")
    ap.add_argument("--keep", action="store_true", help="reuse the filled schema")
    ap.add_argument("--database-url", default=with_database(os.environ.get(
        "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"), "ajs_bench"))
    ap.add_argument("--append", help="append the section to this markdown file")
    return ap.parse_args(argv)


class Explaining:
    """Stands in for a pool: runs each statement under EXPLAIN ANALYZE first, and keeps
    PostgreSQL's execution time and the indexes the plan read."""

    def __init__(self, db: asyncpg.Connection) -> None:
        self.db = db
        self.plans: list[tuple[float, list[str]]] = []

    async def _explain(self, sql: str, args: tuple[Any, ...]) -> None:
        raw = await self.db.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
        plan = json.loads(raw)[0]
        indexes: list[str] = []

        def walk(node: dict[str, Any]) -> None:
            if "Index Name" in node:
                indexes.append(f"{node['Node Type']} {node['Index Name']}")
            elif node.get("Node Type") == "Seq Scan":
                indexes.append(f"Seq Scan {node['Relation Name']}")
            for child in node.get("Plans", []):
                walk(child)

        walk(plan["Plan"])
        self.plans.append((plan["Execution Time"], sorted(set(indexes))))

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        await self._explain(sql, args)
        return await self.db.fetch(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        await self._explain(sql, args)
        return await self.db.fetchval(sql, *args)


async def seed(db: asyncpg.Connection, rows: int) -> None:
    await db.execute("TRUNCATE jobs, job_transitions, job_counts, job_count_deltas, "
                     "job_activity")
    await fill(db, rows, lambda text: print(text, flush=True))
    await db.execute("SET session_replication_role = replica")
    await db.execute("UPDATE jobs SET namespace = 'tenant' || floor(random() * 10) "
                     "WHERE random() < 0.1")
    await db.execute("RESET session_replication_role")
    await db.execute("DELETE FROM job_counts")
    await db.execute("""
        INSERT INTO job_counts (namespace, job_type, status, n, retries)
        SELECT coalesce(namespace, ''), job_type, status, count(*), 0
        FROM jobs GROUP BY 1, job_type, status""")
    await db.execute("""
        INSERT INTO job_activity (minute, namespace, job_type, created, completed, retried,
                                  dead_lettered, cancelled)
        SELECT m, ns, t, 20, 17, 2, 1, 1
        FROM generate_series(date_trunc('minute', now()) - interval '2 days',
                             date_trunc('minute', now()), interval '1 minute') m,
             unnest($1::text[]) ns, unnest($2::text[]) t""", ["", "*", *NAMESPACES], TYPES)
    await db.execute("VACUUM ANALYZE jobs")
    await db.execute("VACUUM ANALYZE job_activity")


async def timed(call: Callable[[], Awaitable[Any]], times: int) -> float:
    took = []
    for _ in range(times):
        t0 = time.perf_counter()
        await call()
        took.append((time.perf_counter() - t0) * 1000)
    return statistics.median(took)


async def run(args: argparse.Namespace) -> str:
    target = Target(args.database_url, "redis://unused", schema="ajs_console",
                    prefix="ajs_console")
    await ensure_database(target.database_url)
    migrate(target)
    db = await asyncpg.connect(target.database_url,
                               server_settings={"search_path": target.schema})
    try:
        if not args.keep or not await db.fetchval("SELECT count(*) > 0 FROM jobs"):
            await seed(db, args.rows)
        total = await db.fetchval("SELECT count(*) FROM jobs")
        dead = await db.fetchval("SELECT count(*) FROM jobs WHERE status = 'FAILED'")
        some_id = str(await db.fetchval("SELECT id FROM jobs ORDER BY seq OFFSET $1 LIMIT 1",
                                        total // 2))
        now = datetime.now(UTC)
        budget = 1024 * 1024

        def page(pool: Any, **kw: Any) -> Callable[[], Awaitable[Any]]:
            async def call() -> Any:
                return await JobStore(pool).list_page(limit=50, max_bytes=budget,
                                                      summary=True, **kw)
            return call

        def prefix(digits: str) -> tuple[uuid.UUID, uuid.UUID]:
            pad = 32 - len(digits)
            return uuid.UUID(digits + "0" * pad), uuid.UUID(digits + "f" * pad)

        reads: dict[str, Callable[[Any], Callable[[], Awaitable[Any]]]] = {
            "activity 1h": lambda p: lambda: activity(p, Window.hour),
            "activity 24h": lambda p: lambda: activity(p, Window.day),
            "activity 24h, one namespace": lambda p: lambda: activity(p, Window.day,
                                                                      "tenant3"),
            "dead-letter groups": lambda p: lambda: dead_letter_groups(p),
            "dead-letter groups, one namespace": lambda p: lambda: dead_letter_groups(
                p, "tenant3"),
            "dead-letter groups, job_type=email": lambda p: lambda: dead_letter_groups(
                p, None, "email"),
            "seq_at (1 day ago)": lambda p: lambda: JobStore(p).seq_at(now - timedelta(1)),
            "list created_after=1h ago": lambda p: page(p, narrow=ListFilter(
                created_after=now - timedelta(hours=1))),
            "list created_after=10 days ago": lambda p: page(p, narrow=ListFilter(
                created_after=now - timedelta(days=10))),
            "list created_before=20 days ago": lambda p: page(p, narrow=ListFilter(
                created_before=now - timedelta(days=20))),
            "list FAILED, email, 12 to 11 days ago": lambda p: page(
                p, status=Status.FAILED, job_type="email", narrow=ListFilter(
                    created_after=now - timedelta(days=12),
                    created_before=now - timedelta(days=11))),
            "list namespace=tenant3, created_after=5 days ago": lambda p: page(
                p, namespace="tenant3", narrow=ListFilter(
                    created_after=now - timedelta(days=5))),
            "list id=<full id>": lambda p: page(p, narrow=ListFilter(
                id_between=prefix(some_id.replace("-", "")))),
            "list id=<4 hex digits>": lambda p: page(p, narrow=ListFilter(
                id_between=prefix(some_id[:4]))),
            "list id=<4 hex digits>, status=COMPLETED": lambda p: page(
                p, status=Status.COMPLETED, narrow=ListFilter(
                    id_between=prefix(some_id[:4]))),
        }
        lines = [f"## Console reads with {total:,} jobs ({dead:,} dead), "
                 f"{datetime.now(UTC):%Y-%m-%d}", "",
                 "`python -m bench.console_reads`: the functions the API's console routes "
                 "call, on one connection; wall: median of "
                 f"{args.times} calls (Python included); PostgreSQL: EXPLAIN ANALYZE "
                 "execution time of each statement of one call.", "",
                 "| read | wall p50 ms | PostgreSQL ms (per statement) | plan reads |",
                 "|---|---|---|---|"]
        for name, make in reads.items():
            wall = await timed(make(db), args.times)
            explaining = Explaining(db)
            await make(explaining)()
            pg = " + ".join(f"{t:.2f}" for t, _ in explaining.plans)
            used = "; ".join(sorted({i for _, idx in explaining.plans for i in idx}))
            lines.append(f"| {name} | {wall:.2f} | {pg} | {used} |")
            print(lines[-1], flush=True)
        return "\n".join(lines) + "\n"
    finally:
        await db.close()


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    publish(asyncio.run(run(args)), args.append)


if __name__ == "__main__":
    main()
