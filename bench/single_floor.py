"""``python -m bench.single_floor``: what one awaited enqueue costs, part by part.

    uv run python -m bench.single_floor                    # local stores
    uv run python -m bench.single_floor --redis-url redis://127.0.0.1:6390/0 \\
        --database-url postgresql://postgres@127.0.0.1:5439/ajs_bench   # the peers' servers

Issue 12 asks for single enqueues at twice SAQ-PG's rate. Each figure here is N calls
awaited one after the other (as the peer harness enqueues), medians of ROUNDS: our
``JobService.create``; a bare one-row ``INSERT`` of (uuid, jsonb) into a table with only a
primary key (the floor any durable enqueue pays: one round trip and a WAL flush); one-row
INSERTs into copies of our ``jobs`` table as it is (a QUEUED row's five index entries and
the count trigger), without the trigger, with the primary key only; and a Redis PING (the
floor of the push that follows the commit). The copies live in a schema of their own,
dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from bench.testbed import JOB_MODULES, Target, add_store_arguments, ensure_database, migrate
from bench.workloads import spec
from shared.connections import Stores
from shared.core.service import JobService
from shared.registry import load

SCHEMA = "ajs_floor"
INSERT = ("INSERT INTO {table} (id, queue, job_type, payload, priority, status, run_at, "
          "max_retries, timeout_seconds) VALUES ($1, 'default', 'noop', $2, 5, 'QUEUED', "
          "now(), 3, 300) RETURNING seq, created_at")
# The copies of jobs: (name, DDL); "{t}" is the copy's name.
COPIES = [
    ("jobs as it is", "CREATE TABLE {t} (LIKE jobs INCLUDING ALL); CREATE TRIGGER {t}_count "
     "AFTER INSERT ON {t} REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
     "EXECUTE FUNCTION jobs_count_insert()"),
    ("jobs without the count trigger", "CREATE TABLE {t} (LIKE jobs INCLUDING ALL)"),
    ("jobs with the primary key only", "CREATE TABLE {t} (LIKE jobs INCLUDING DEFAULTS "
     "INCLUDING IDENTITY INCLUDING CONSTRAINTS); ALTER TABLE {t} ADD PRIMARY KEY (id)"),
]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.single_floor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2_000, help="calls per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    add_store_arguments(ap)
    return ap.parse_args(argv)


async def _insert_one(insert: Any) -> Any:
    return await insert.fetchrow(uuid.uuid4(), '{"t_enq": 1.0}')


async def rate(n: int, call: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await call()
    return n / (time.perf_counter() - t0)


async def run(args: argparse.Namespace) -> dict[str, float]:
    target = Target(args.database_url, args.redis_url, SCHEMA, SCHEMA)
    await ensure_database(args.database_url)
    migrate(target)
    stores = Stores(target.settings())
    service = JobService(stores, load(JOB_MODULES))
    db = await asyncpg.connect(args.database_url, server_settings={"search_path": SCHEMA})
    try:
        await db.execute("CREATE TABLE floor_bare (id uuid PRIMARY KEY, payload jsonb)")
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "our create (JobService.create)": lambda: service.create(spec(time.time())),
        }
        bare = await db.prepare("INSERT INTO floor_bare VALUES ($1, $2)")
        calls["bare one-row INSERT (uuid, jsonb)"] = lambda: bare.fetch(uuid.uuid4(), "{}")
        for i, (name, ddl) in enumerate(COPIES):
            await db.execute(ddl.format(t=f"floor_copy{i}"))
            insert = await db.prepare(INSERT.format(table=f"floor_copy{i}"))
            calls[f"one-row INSERT into {name}"] = functools.partial(
                _insert_one, insert)
        calls["Redis PING"] = stores.redis.ping
        await service.create(spec(-1.0))  # warm: connections open, statements prepared
        found: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                found[name].append(await rate(args.n, call))
        return {name: round(statistics.median(rates)) for name, rates in found.items()}
    finally:
        await db.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        await db.close()
        await stores.close()


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    found = asyncio.run(run(args))
    for name, per_s in found.items():
        print(f"{name:45s} {per_s:8,d}/s  {1000 / per_s:.3f} ms")
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n```\n" + json.dumps(found, indent=1) + "\n```\n")


if __name__ == "__main__":
    main()
