"""The stores the benchmark runs against, and how it resets them between steps.

The benchmark owns a PostgreSQL database (created if missing) and a schema in it, plus a
Redis key prefix, so it never sees another process's jobs. A database of its own also
keeps ``pg_stat_database``'s commit counter about us alone: other helpers' tests share
the server. Before each step the jobs are truncated and vacuumed and the prefix's Redis
keys deleted, like the peer harness's ``reset()``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis

from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
JOB_MODULES = ["bench.jobs"]
BYTECODE_CACHE = "/tmp/ajs-bench/pycache"  # see bench/bytecode.py


@dataclass(frozen=True)
class Target:
    database_url: str
    redis_url: str
    schema: str = "ajs_bench"
    prefix: str = "ajs_bench"
    bytecode_cache: str | None = BYTECODE_CACHE  # None: children compile from source
    auth_disabled: bool = False  # the API server checks no key (to price the key check)

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "db_schema": self.schema,
            "redis_prefix": self.prefix,
            "job_modules": JOB_MODULES,
        }
        values.update(overrides)
        return Settings(**values)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a child process (worker, API server): our settings, every
        other AJS_ variable of ours removed so the parent's cannot leak in."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AJS_")}
        env.update({
            "AJS_DATABASE_URL": self.database_url,
            "AJS_REDIS_URL": self.redis_url,
            "AJS_DB_SCHEMA": self.schema,
            "AJS_REDIS_PREFIX": self.prefix,
            "AJS_JOB_MODULES": ",".join(JOB_MODULES),
            "AJS_LOG_LEVEL": "WARNING",  # no per-job logging, as for every peer
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        })
        env.pop("DATABASE_URL", None)
        env.pop("REDIS_URL", None)
        env.pop("PGOPTIONS", None)  # could turn synchronous_commit off behind our back
        if self.bytecode_cache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = self.bytecode_cache
        if self.auth_disabled:
            env["AJS_AUTH_DISABLED"] = "true"
        env.update(extra)
        return env


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def add_store_arguments(ap: argparse.ArgumentParser) -> None:
    """``--database-url`` (``DATABASE_URL``'s server, database ``ajs_bench``), ``--redis-url``
    and ``--append``: what every long-run benchmark takes."""
    ap.add_argument("--database-url", default=with_database(os.environ.get(
        "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"), "ajs_bench"))
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL",
                                                          "redis://127.0.0.1:6379/0"))
    ap.add_argument("--append", help="append the section to this markdown file")


async def ensure_database(url: str) -> None:
    """Create the benchmark's database when it does not exist yet."""
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(with_database(url, "postgres"))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def fill_bytecode_cache(target: Target) -> None:
    """Compile what the children import into the private cache (quick once filled)."""
    if target.bytecode_cache:
        subprocess.run([sys.executable, "-m", "bench.bytecode"], cwd=ROOT, env=target.env(),
                       check=True, capture_output=True)


def migrate(target: Target) -> None:
    """``python -m shared.store.migrate upgrade`` with the benchmark's schema, as an operator
    would run it."""
    subprocess.run([sys.executable, "-m", "shared.store.migrate", "upgrade"], cwd=ROOT,
                   env=target.env(), check=True, capture_output=True)


class Busy(RuntimeError):
    """Another benchmark holds the schema."""


class Testbed:
    """One admin connection to each store, for resets and counters (never the hot path)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.pg: asyncpg.Connection | None = None
        self.redis: aioredis.Redis | None = None

    async def open(self) -> None:
        self.pg = await asyncpg.connect(
            self.target.database_url, server_settings={"search_path": self.target.schema})
        # Two benchmarks on one schema would truncate each other's jobs mid-step: hold a
        # session advisory lock on the schema for the whole run, or refuse to start.
        if not await self.pg.fetchval("SELECT pg_try_advisory_lock(hashtext($1))",
                                      f"ajs-bench:{self.target.schema}"):
            await self.pg.close()
            self.pg = None
            raise Busy(f"another benchmark is running on schema {self.target.schema!r} of "
                       f"{urlsplit(self.target.database_url).path.lstrip('/')}; wait for it "
                       "(or use --schema/--prefix for a separate namespace)")
        self.redis = aioredis.Redis.from_url(self.target.redis_url, decode_responses=True)

    async def close(self) -> None:
        if self.pg is not None:
            await self.pg.close()
        if self.redis is not None:
            await self.redis.aclose()

    @property
    def db(self) -> asyncpg.Connection:
        assert self.pg is not None, "Testbed.open() first"
        return self.pg

    @property
    def r(self) -> aioredis.Redis:
        assert self.redis is not None, "Testbed.open() first"
        return self.redis

    async def synchronous_commit(self) -> str:
        return str(await self.db.fetchval("SHOW synchronous_commit"))

    async def server_versions(self) -> dict[str, str]:
        info = await self.r.info("server")
        return {"postgres": str(await self.db.fetchval("SHOW server_version")),
                "redis": str(info.get("redis_version"))}

    async def wipe(self) -> None:
        """Empty the jobs, their history and counts, vacuum, checkpoint, and drop our Redis
        keys.

        The checkpoint starts every step with no dirty buffers pending, as the peer
        harness does for its PostgreSQL peers.
        """
        # Every table a step fills: the history has no foreign key to jobs, so CASCADE
        # alone would leave it growing across steps and runs.
        await self.db.execute("TRUNCATE jobs, job_transitions, job_counts, job_count_deltas")
        for table in ("jobs", "job_transitions", "job_counts", "job_count_deltas"):
            await self.db.execute(f"VACUUM ANALYZE {table}")
        await self.db.execute("CHECKPOINT")
        pattern = f"{{{self.target.prefix}:*"  # every key we write starts with {prefix:
        batch: list[str] = []
        async for key in self.r.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await self.r.unlink(*batch)
                batch.clear()
        if batch:
            await self.r.unlink(*batch)

    async def count(self, status: str) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM jobs WHERE status = $1",
                                          status))
