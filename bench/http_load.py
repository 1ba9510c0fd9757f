"""``python -m bench.http_load``: HTTP creates under open-loop, constant-rate load.

    uv run python -m bench.http_load                       # the default sweep, this tree
    uv run python -m bench.http_load --rates 1000 --batch-rates ''   # one step
    uv run python -m bench.http_load --root before=/path/to/old/checkout --root after=.
    uv run python -m bench.http_load --profile             # py-spy the API server

One API process (``bench.serve_api``: uvicorn with uvloop and httptools, as
``scripts/dev.sh`` runs it) pinned to ``--api-cpu``; the load generator, Debian's ``wrk``
with ``bench/wrk/open_loop.lua``, pinned to ``--gen-cpu``, so it cannot take the API's
CPU. PostgreSQL (synchronous_commit on, checked) and Redis are the machine's and run on
either core: on a 2-core box they share the cores with both.

Each step sends ``RATE`` requests a second on a fixed schedule for ``--warmup`` +
``--seconds`` seconds over ``--connections`` keep-alive connections, with a ``jobs:write``
API key (auth on). A request's latency counts from its *scheduled* send time, so a server
that falls behind shows its queue (no coordinated omission; see the Lua script). Only
requests scheduled after the warm-up count. Reported per step: the rate achieved (answered
201 per second of schedule), p50/p90/p99/max, errors (non-201 answers, socket errors,
requests scheduled but not answered by the end), the API server's CPU per request (from
/proc), and how busy the box was. With several ``--root``s, every server is started once
and the steps run interleaved (rate by rate, root by root, ``--repeats`` times), and the
tables show medians. The stores are emptied before every step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from bench import hotspots
from bench.api_server import ApiServer
from bench.counters import load1, process_cpu_s
from bench.report import publish
from bench.testbed import (
    BYTECODE_CACHE,
    ROOT,
    Busy,
    Target,
    Testbed,
    ensure_database,
    fill_bytecode_cache,
    migrate,
    with_database,
)
from shared.store.api_keys import ApiKeyStore

SCRIPT = ROOT / "bench" / "wrk" / "open_loop.lua"
P99_TARGET_MS = 50.0
SEED_JOBS_PER_S = 12_500 / 3600  # the seed's workload: 12,500 jobs an hour


@dataclass
class Step:
    root: str
    jobs_per_request: int
    rate: float  # requests/s scheduled
    seconds: float
    answered: int = 0  # 201s for requests scheduled inside the measured window
    missing: int = 0  # scheduled in the window, not answered by the end
    bad: dict[str, int] = field(default_factory=dict)  # non-201 status -> count
    socket_errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    server_cpu_ms_per_request: float = 0.0
    stores_cpu_ms_per_request: float = 0.0  # the PostgreSQL backends on our database
    busy_cores: float = 0.0
    load1: float = 0.0

    @property
    def achieved(self) -> float:
        return self.answered / self.seconds

    @property
    def errors(self) -> int:
        return sum(self.bad.values()) + self.socket_errors + self.missing

    def pct(self, p: float) -> float:
        return pct(sorted(self.latencies_ms), p) if self.latencies_ms else math.inf

    def ok(self) -> bool:
        """Sustained: (nearly) every scheduled request answered, none failed, p99 in time."""
        return (self.errors == 0 and self.achieved >= 0.98 * self.rate
                and self.pct(99) <= P99_TARGET_MS)

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        out.update(achieved=round(self.achieved, 1), errors=self.errors,
                   p50=self.pct(50), p90=self.pct(90), p99=self.pct(99),
                   max=max(self.latencies_ms, default=math.inf), ok=self.ok())
        return out


def pct(sorted_values: list[float], p: float) -> float:
    """Nearest rank, as the rest of the benchmark computes it."""
    k = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.http_load", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="250,500,750,1000,1250,1500",
                    help="single creates: requests/s per step ('' skips)")
    ap.add_argument("--batch-rates", default="5,10,15,20,30",
                    help="batches: requests/s per step ('' skips)")
    ap.add_argument("--batch-size", type=int, default=100, help="jobs per batch request")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per step")
    ap.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds first")
    ap.add_argument("--connections", type=int, default=64,
                    help="most keep-alive connections wrk opens (fewer at low rates)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the whole sweep")
    ap.add_argument("--api-cpu", default="0", help="cores of the API process (taskset -c)")
    ap.add_argument("--gen-cpu", default="1", help="cores of wrk (taskset -c)")
    ap.add_argument("--root", action="append", default=[], metavar="NAME=DIR",
                    help="a source tree to serve the API from (repeat to interleave "
                    "revisions); default: this tree")
    default_db = with_database(os.environ.get(
        "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"), "ajs_bench")
    ap.add_argument("--database-url", default=default_db)
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL",
                                                          "redis://127.0.0.1:6379/0"))
    ap.add_argument("--schema", default="ajs_bench")
    ap.add_argument("--prefix", default="ajs_bench")
    ap.add_argument("--profile", action="store_true",
                    help="sample the API server(s) with py-spy (slows them)")
    ap.add_argument("--out", help="directory for raw.json, wrk samples, server log, profiles")
    ap.add_argument("--append", help="append the tables to this markdown file")
    ap.add_argument("--label", default="")
    a = ap.parse_args(argv)
    a.out = a.out or time.strftime("/tmp/ajs-bench/http-%Y%m%d-%H%M%S")
    a.roots = [(name, Path(root).resolve()) for name, root in
               (r.split("=", 1) for r in a.root)] or [("this", ROOT)]
    return a


def _rates(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _stores_cpu(database: str) -> dict[int, float]:
    """CPU seconds, by process, of this benchmark's PostgreSQL backends (those on its
    database: the API's and the benchmark's own). The WAL writer and Redis serve every
    session on the box in one process each, so on a shared box they would count others'
    work: left out."""
    out: dict[int, float] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if cmd.startswith("postgres: ") and f" {database} " in cmd:
            out[int(pid)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two readings by the processes alive at both (and new ones)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def _busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


async def run_wrk(a: argparse.Namespace, base_url: str, key: str, rate: float, jobs: int,
                  out: str) -> None:
    """One wrk run on its own core; its Lua script writes the samples to ``out``."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    duration = math.ceil(a.warmup + a.seconds + 1.0)  # +1 s: the last answers come in
    # Enough connections for 0.25 s of requests in flight, but no more: a connection idle
    # past uvicorn's keep-alive timeout (5 s) is closed by the server, which wrk counts as
    # a read error (and a request sent into the closing socket is lost).
    connections = max(2, min(a.connections, math.ceil(rate * 0.25)))
    env = {**os.environ, "AJS_WRK_RATE": str(rate), "AJS_WRK_JOBS": str(jobs),
           "AJS_WRK_KEY": key, "AJS_WRK_OUT": out, "AJS_WRK_THREADS": "1"}
    proc = await asyncio.create_subprocess_exec(
        "taskset", "-c", a.gen_cpu, wrk, "-t1", f"-c{connections}", f"-d{duration}s",
        "--timeout", "30s", "-s", str(SCRIPT), base_url, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.decode()[-2000:]}")


def read_samples(step: Step, path: str, warmup: float) -> int:
    """Fill ``step`` from the script's file; returns every answered request (warm-up too)."""
    lo, hi = warmup * 1e6, (warmup + step.seconds) * 1e6
    requests = 0
    with open(path) as f:
        for line in f:
            head, _, rest = line.partition(" ")
            if head == "summary":
                fields = dict(kv.split("=") for kv in rest.split())
                requests = int(fields["requests"])
                step.socket_errors = sum(int(fields[k]) for k in
                                         ("connect", "read", "write", "timeout"))
            elif head == "thread":
                fields = dict(kv.split("=") for kv in rest.split()[1:])
                if int(fields["unmatched"]):
                    step.bad["201 without t_enq"] = int(fields["unmatched"])
            elif head == "bad":
                status, count = rest.split()
                step.bad[status] = step.bad.get(status, 0) + int(count)
            else:
                at, lat = int(head), int(rest)
                if lo <= at < hi:
                    step.answered += 1
                    step.latencies_ms.append(lat / 1000)
    step.missing = max(0, round(step.rate * step.seconds) - step.answered
                       - sum(step.bad.values()))
    return requests


async def one_step(a: argparse.Namespace, bed: Testbed, server: ApiServer, key: str,
                   root: str, rate: float, jobs: int, n: int) -> Step:
    await bed.wipe()
    step = Step(root, jobs, rate, a.seconds, load1=load1())
    out = os.path.join(a.out, f"wrk-{root}-{jobs}x{rate:g}-{n}.txt")
    cpu0, busy0, t0 = process_cpu_s(server.pid), _busy_s(), time.monotonic()
    database = urlsplit(bed.target.database_url).path.lstrip("/")
    stores0 = _stores_cpu(database)
    await run_wrk(a, server.base_url, key, rate, jobs, out)
    cpu, busy, took = process_cpu_s(server.pid) - cpu0, _busy_s() - busy0, time.monotonic() - t0
    stores = _spent(stores0, _stores_cpu(database))
    requests = read_samples(step, out, a.warmup)
    step.server_cpu_ms_per_request = round(1000 * cpu / max(requests, 1), 3)
    step.stores_cpu_ms_per_request = round(1000 * stores / max(requests, 1), 3)
    step.busy_cores = round(busy / took, 2)
    s = step.summary()
    print(f"  {root:>8} {jobs:>4} x {rate:>6g}/s: achieved {s['achieved']:>7.1f}/s  "
          f"p50 {s['p50']:7.1f}  p90 {s['p90']:7.1f}  p99 {s['p99']:7.1f}  "
          f"max {s['max']:7.1f} ms  errors {s['errors']}  server CPU "
          f"{step.server_cpu_ms_per_request:.3f} ms/req  PG backends CPU "
          f"{step.stores_cpu_ms_per_request:.3f} ms/req  box {step.busy_cores} cores  "
          f"load {step.load1}", flush=True)
    return step


def median_of(steps: Sequence[Step]) -> dict[str, Any]:
    """Medians over repeats of one (root, size, rate); errors summed."""
    summaries = [s.summary() for s in steps]

    def med(k: str) -> float:
        return float(statistics.median(float(s[k]) for s in summaries))

    return {"root": steps[0].root, "jobs_per_request": steps[0].jobs_per_request,
            "rate": steps[0].rate, "achieved": med("achieved"), "p50": med("p50"),
            "p90": med("p90"), "p99": med("p99"), "max": med("max"),
            "errors": sum(s["errors"] for s in summaries),
            "cpu": med("server_cpu_ms_per_request"),
            "stores_cpu": med("stores_cpu_ms_per_request"),
            "busy": round(med("busy_cores"), 2), "load1": round(med("load1"), 2),
            "runs": len(steps),
            "ok": sum(s["ok"] for s in summaries) * 2 > len(summaries)}


def _f(x: float, digits: int = 1) -> str:
    return "—" if math.isinf(x) else f"{x:,.{digits}f}"


def render(a: argparse.Namespace, steps: list[Step], header: list[str]) -> str:
    groups: dict[tuple[str, int, float], list[Step]] = {}
    for s in steps:
        groups.setdefault((s.root, s.jobs_per_request, s.rate), []).append(s)
    rows = [median_of(g) for g in groups.values()]
    lines = [*header, ""]
    for jobs in sorted({r["jobs_per_request"] for r in rows}):
        what = ("`POST /api/v1/jobs`, one job per request" if jobs == 1 else
                f"`POST /api/v1/jobs/batch`, {jobs} jobs per request")
        lines += ["", f"{what} (latency ms from the scheduled send; medians of "
                  f"{a.repeats} run(s)):", "",
                  "| code | rate/s | achieved/s | jobs/s | p50 | p90 | p99 | max | errors "
                  "| API CPU ms/req | PG backends CPU ms/req | box busy (cores) | load1 |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        ordered = sorted((r for r in rows if r["jobs_per_request"] == jobs),
                         key=lambda r: (r["rate"], [n for n, _ in a.roots].index(r["root"])))
        for r in ordered:
            mark = "" if r["ok"] else " ✗"
            lines.append(f"| {r['root']} | {r['rate']:,g} | {_f(r['achieved'])} "
                         f"| {_f(r['achieved'] * jobs, 0)} | {_f(r['p50'])} | {_f(r['p90'])} "
                         f"| {_f(r['p99'])}{mark} | {_f(r['max'])} | {r['errors']} "
                         f"| {r['cpu']:.3f} | {r['stores_cpu']:.3f} | {r['busy']} "
                         f"| {r['load1']} |")
        lines.append("")
        for name, _ in a.roots:
            good = [r["rate"] for r in rows if r["root"] == name
                    and r["jobs_per_request"] == jobs and r["ok"]]
            best = f"{max(good):,g} requests/s ({max(good) * jobs:,g} jobs/s)" if good \
                else "none of the rates tried"
            lines.append(f"- {name}: highest rate sustained with p99 <= "
                         f"{P99_TARGET_MS:g} ms and no error: {best}")
    return "\n".join(lines)


def open_log(path: str) -> IO[bytes]:
    return open(path, "ab")


async def run(a: argparse.Namespace, log: IO[bytes]) -> tuple[list[Step], list[str]] | int:
    """The sweep; its steps and the section's header (or an exit status: not run)."""
    target = Target(a.database_url, a.redis_url, a.schema, a.prefix)
    await ensure_database(target.database_url)
    bed = Testbed(target)
    try:
        await bed.open()
    except Busy as exc:
        print(f"not running: {exc}")
        return 3
    steps: list[Step] = []
    try:
        await asyncio.to_thread(migrate, target)
        await asyncio.to_thread(fill_bytecode_cache, target)
        sync = await bed.synchronous_commit()
        if sync != "on":
            print("refusing to measure: synchronous_commit must be on")
            return 2
        servers_v = await bed.server_versions()
        key, _ = await ApiKeyStore(bed.db).create("bench-http-load", ["jobs:write"], None)
        started, load_before = time.strftime("%Y-%m-%d %H:%M:%S %Z"), load1()
        plan = [(1, r) for r in _rates(a.rates)] + [(a.batch_size, r)
                                                   for r in _rates(a.batch_rates)]
        async with AsyncExitStack() as stack:
            servers: dict[str, ApiServer] = {}
            for name, root in a.roots:
                profile = f"{a.out}/api_{name}.txt" if a.profile else None
                server = ApiServer(target, log, profile=profile, root=root, cpus=a.api_cpu)
                stack.push_async_callback(server.stop)
                servers[name] = server
            for server in servers.values():
                await server.ready()
            for n in range(a.repeats):
                for jobs, rate in plan:
                    for name, _ in a.roots:
                        steps.append(await one_step(a, bed, servers[name], key, name, rate,
                                                    jobs, n))
        await bed.wipe()
    finally:
        await bed.close()
    header = [
        f"### HTTP create, open loop: run {started}{' — ' + a.label if a.label else ''}",
        "",
        "- command: `python -m bench.http_load " + " ".join(sys.argv[1:]) + "`",
        f"- one API process (uvicorn, uvloop, httptools) on core {a.api_cpu}; wrk "
        f"(1 thread, rate/4 connections, at most {a.connections}) on core {a.gen_cpu}; "
        f"PostgreSQL {servers_v['postgres']} (synchronous_commit={sync}) and Redis "
        f"{servers_v['redis']} on the same 2 cores; API key on (jobs:write)",
        f"- {a.warmup:g} s warm-up + {a.seconds:g} s measured per step; load average "
        f"{load_before} before, {load1()} after; bytecode cache {BYTECODE_CACHE}",
        "- roots: " + ", ".join(f"{n} = {r}" for n, r in a.roots),
    ]
    return steps, header


def finish(a: argparse.Namespace, steps: list[Step], header: list[str]) -> None:
    text = render(a, steps, header)
    if a.profile:
        for name, _ in a.roots:
            path = os.path.join(a.out, f"api_{name}.txt")
            if os.path.exists(path):
                text += (f"\n\nAPI server profile ({name}): "
                         + hotspots.render(hotspots.read(path), 20))
    with open(os.path.join(a.out, "raw.json"), "w") as f:
        json.dump([s.summary() for s in steps], f, indent=1, default=str)
    print()
    publish(text, a.append)
    print(f"\nraw results: {a.out}")


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    os.makedirs(a.out, exist_ok=True)
    with open_log(os.path.join(a.out, "server.log")) as log:
        outcome = asyncio.run(run(a, log))
    if isinstance(outcome, int):
        raise SystemExit(outcome)
    finish(a, *outcome)


if __name__ == "__main__":
    main()
