"""``python -m bench``: run the durable benchmark once and print the tables.

    uv run python -m bench                 # N=10,000, latency 15 s at 200 jobs/s
    uv run python -m bench --quick         # N=1,000, 3 s: a smoke run under a minute
    uv run python -m bench --append bench/RESULTS.md   # also append the tables there
    uv run python -m bench --peer-servers  # against ../shared/peers' throwaway servers
    uv run python -m bench --profile       # py-spy the drain workers and the API server

Stores: ``--database-url`` (default: ``DATABASE_URL``'s server, database ``ajs_bench``,
created if missing) and ``--redis-url`` (default ``REDIS_URL`` or the local Redis); schema
and key prefix ``ajs_bench``. The run refuses to measure unless ``synchronous_commit`` is
on. Raw results and the worker log go to ``--out`` (default /tmp/ajs-bench/<time>/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from typing import IO, Any
from urllib.parse import urlsplit

from bench import hotspots
from bench.counters import load1
from bench.report import render
from bench.testbed import (
    BYTECODE_CACHE,
    ROOT,
    Busy,
    Target,
    ensure_database,
    fill_bytecode_cache,
    migrate,
    with_database,
)
from bench.workloads import Bench, Plan

PEER_SERVERS = ("postgresql://postgres@127.0.0.1:5439/ajs_bench", "redis://127.0.0.1:6390/0")
LIBRARIES = ("asyncpg", "redis", "hiredis", "fastapi", "uvicorn", "pydantic", "httpx")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=1,000 and a 3 s latency run")
    ap.add_argument("--n", type=int, help="jobs per enqueue and drain step (10,000)")
    ap.add_argument("--http-n", type=int, help="jobs for one-at-a-time HTTP (N); 0 skips HTTP")
    ap.add_argument("--conc", default="10,100", help="drain concurrencies ('' skips drains)")
    ap.add_argument("--skip", default="", help="comma list of steps to leave out: single, "
                    "batch, http, latency, scheduled (a drain then fills its queue untimed)")
    ap.add_argument("--rate", type=float, default=200.0, help="latency and scheduled steps: jobs/s")
    ap.add_argument("--seconds", type=float,
                    help="latency and scheduled steps: duration (15; 0 skips)")
    default_db = with_database(os.environ.get(
        "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"), "ajs_bench")
    ap.add_argument("--database-url", default=default_db)
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL",
                                                          "redis://127.0.0.1:6379/0"))
    ap.add_argument("--schema", default="ajs_bench", help="PostgreSQL schema of the run")
    ap.add_argument("--prefix", default="ajs_bench", help="Redis key prefix of the run")
    ap.add_argument("--peer-servers", action="store_true",
                    help="use ../shared/peers/servers.sh's PostgreSQL 5439 and Redis 6390")
    ap.add_argument("--profile", action="store_true",
                    help="sample the drain workers and the API server with py-spy (slows them)")
    ap.add_argument("--cold-imports", action="store_true",
                    help="no bytecode cache for the worker and API (see bench/bytecode.py)")
    ap.add_argument("--auth-off", action="store_true",
                    help="the API server checks no key (AJS_AUTH_DISABLED), to price the check")
    ap.add_argument("--out", help="directory for raw.json, worker.log and profiles")
    ap.add_argument("--append", help="append the printed tables to this markdown file")
    ap.add_argument("--label", default="", help="a note for the appended section's title")
    a = ap.parse_args(argv)
    a.n = a.n or (1000 if a.quick else 10_000)
    a.http_n = a.n if a.http_n is None else a.http_n
    a.seconds = a.seconds if a.seconds is not None else (3.0 if a.quick else 15.0)
    if a.peer_servers:
        a.database_url, a.redis_url = PEER_SERVERS
    a.out = a.out or time.strftime("/tmp/ajs-bench/%Y%m%d-%H%M%S")
    return a


def _git_revision() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "shared", "worker", "functions")
    return rev + ("+dirty" if dirty else "")


def _memory_gib() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) // (1024 * 1024)


async def run(a: argparse.Namespace) -> int:
    os.makedirs(a.out, exist_ok=True)
    target = Target(a.database_url, a.redis_url, a.schema, a.prefix,
                    bytecode_cache=None if a.cold_imports else BYTECODE_CACHE,
                    auth_disabled=a.auth_off)
    say = print
    await ensure_database(target.database_url)
    plan = Plan(n=a.n, http_n=a.http_n, rate=a.rate, seconds=a.seconds,
                concurrencies=tuple(int(c) for c in a.conc.split(",") if c.strip()),
                profile_dir=a.out if a.profile else None,
                skip=frozenset(x.strip() for x in a.skip.split(",") if x.strip()))
    log = open_log(os.path.join(a.out, "worker.log"))
    with log:
        bench = Bench(target, plan, log, say)
        try:
            await bench.bed.open()  # holds the schema's lock until the run ends
        except Busy as exc:
            say(f"not running: {exc}")
            return 3
        try:
            await asyncio.to_thread(migrate, target)
            await asyncio.to_thread(fill_bytecode_cache, target)
            sync = await bench.bed.synchronous_commit()
            servers = await bench.bed.server_versions()
            say(f"synchronous_commit = {sync}")
            if sync != "on":
                say("refusing to measure: the benchmark is for durable commits "
                    "(synchronous_commit must be on)")
                return 2
            started, load_before = time.strftime("%Y-%m-%d %H:%M:%S %Z"), load1()
            say(f"running N={plan.n:,} (HTTP one at a time: {plan.http_n:,}), drains at "
                f"{plan.concurrencies}, latency {plan.rate:g}/s for {plan.seconds:g} s; "
                f"load {load_before}")
            t0 = time.monotonic()
            results = await bench.run()
        finally:
            await bench.bed.close()
    took = time.monotonic() - t0
    results.update(n=plan.n, http_n=plan.http_n, rate=plan.rate, synchronous_commit=sync,
                   servers=servers)
    revision = _git_revision()
    libs = ", ".join(f"{name} {version(name)}" for name in LIBRARIES)
    header = [
        f"### Run {started}{' — ' + a.label if a.label else ''}",
        "",
        f"- code: {revision}; command: `python -m bench {' '.join(sys.argv[1:])}`".rstrip(),
        f"- box: {platform.node()}, {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} cores, {_memory_gib()} GiB; Python {platform.python_version()}; "
        f"{libs}",
        f"- stores: PostgreSQL {servers['postgres']} at {_hostport(a.database_url)} "
        f"(synchronous_commit={sync}), Redis {servers['redis']} at "
        f"{_hostport(a.redis_url)}; schema `{a.schema}`, key prefix `{a.prefix}`",
        f"- load average: {load_before} before, {load1()} after; took {took:.0f} s; "
        + ("children compile every module from source (--cold-imports)" if a.cold_imports
           else f"children use a bytecode cache ({BYTECODE_CACHE}), as a deployment would"),
    ]
    text = render(results, header, revision)
    if plan.profile_dir:
        text += profiles(plan.profile_dir)
    save(a, results, text)
    say("")
    say(text)
    say(f"\nraw results: {a.out}/raw.json")
    if a.append:
        say(f"appended to {a.append}")
    return 0


def open_log(path: str) -> IO[bytes]:
    return open(path, "ab")


def profiles(folder: str) -> str:
    text = ""
    for name in sorted(os.listdir(folder)):
        if name.startswith(("drain", "api_")) and name.endswith(".txt"):
            summary = hotspots.render(hotspots.read(os.path.join(folder, name)), 15)
            what = "API server" if name.startswith("api_") else "Worker"
            text += f"\n\n{what} profile, {name.removesuffix('.txt')}: {summary}"
    return text


def save(a: argparse.Namespace, results: dict[str, Any], text: str) -> None:
    with open(os.path.join(a.out, "raw.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    if a.append:
        with open(a.append, "a") as f:
            f.write("\n" + text + "\n")


def _hostport(url: str) -> str:
    return urlsplit(url).netloc.rsplit("@", 1)[-1]


def main(argv: list[str] | None = None) -> None:
    raise SystemExit(asyncio.run(run(parse(argv))))


if __name__ == "__main__":
    main()
