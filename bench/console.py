"""``python -m bench.console``: the web console with a million jobs in the store.

    uv run python -m bench.console                    # 1,000,000 finished jobs
    uv run python -m bench.console --rows 100000      # a smoke run

Fills schema ``ajs_console_ui`` with ROWS finished jobs (as ``bench.millions`` does), then
serves the real API under uvicorn and measures, as medians and p95 of repeated runs:

1. each data fragment's answer time through HTTP (the server's work plus loopback);
2. in Debian's Chromium (headless, a fresh context each time: nothing cached): the overview
   shell's first contentful paint (the Paint Timing API), and the time from navigation
   until the overview's data is on screen (its fragment fetched and swapped in). Requests
   are not intercepted (Playwright's routing would add a round trip through this process
   to each); that the console asks for nothing off loopback is what the browser tests
   check.

The shell is static, so its paint does not depend on the store; the overview's data is
read without a scan (exact counts from ``job_counts``, activity from ``job_activity``),
so it should not either: the second figure is the one that would show it if it did.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import UTC, datetime

import httpx
from playwright.async_api import async_playwright

from bench.api_server import ApiServer
from bench.millions import fill
from bench.report import publish
from bench.testbed import (
    Target,
    Testbed,
    add_store_arguments,
    ensure_database,
    migrate,
)
from bench.workloads import pct
from shared.store.api_keys import ApiKeyStore

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The paint entry is recorded asynchronously: wait for it (buffered: also if already there).
FIRST_PAINT = """new Promise(resolve => new PerformanceObserver((list, observer) => {
    const entry = list.getEntriesByName('first-contentful-paint')[0];
    if (entry) { observer.disconnect(); resolve(entry.startTime); }
}).observe({type: 'paint', buffered: true}))"""
KEY = "ajs-console-credential"  # functions/api/console/assets/console.js
FRAGMENTS = {"overview": {}, "jobs (first page)": {}, "jobs status=FAILED": {
    "status": "FAILED"}, "dead letters (grouped)": {}, "whoami": {}}
PATHS = {"overview": "overview", "jobs (first page)": "jobs", "jobs status=FAILED": "jobs",
         "dead letters (grouped)": "dead-letters", "whoami": "whoami"}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--times", type=int, default=20, help="repeats of each measurement")
    add_store_arguments(ap)
    return ap.parse_args(argv)


def summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"p50_ms": round(statistics.median(values), 1), "p95_ms": round(pct(values, 95), 1)}


async def fragments(client: httpx.AsyncClient, times: int) -> dict[str, dict[str, float]]:
    out = {}
    for name, params in FRAGMENTS.items():
        took = []
        for _ in range(times):
            t0 = time.perf_counter()
            r = await client.get(f"/api/v1/console/fragments/{PATHS[name]}", params=params)
            took.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text
        out[name] = summary(took)
    return out


async def browser(base: str, key: str, times: int) -> dict[str, dict[str, float]]:
    paint, data = [], []

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for _ in range(times):
                context = await chromium.new_context()
                try:
                    await context.add_init_script(
                        f"sessionStorage.setItem({KEY!r}, {key!r})")
                    page = await context.new_page()
                    await page.goto(f"{base}/api/v1/console")
                    await page.get_by_role("heading", name="Jobs by state").wait_for()
                    shown = await page.evaluate("performance.now()")
                    fcp = await page.evaluate(FIRST_PAINT)
                    paint.append(float(fcp))
                    data.append(float(shown))
                finally:
                    await context.close()
        finally:
            await chromium.close()
    return {"shell first contentful paint": summary(paint),
            "overview data on screen": summary(data)}


async def run(args: argparse.Namespace) -> str:
    target = Target(args.database_url, args.redis_url, schema="ajs_console_ui",
                    prefix="ajs_console_ui")
    await ensure_database(target.database_url)
    migrate(target)
    bed = Testbed(target)
    await bed.open()
    log = open("/tmp/ajs-console-bench.log", "ab")  # noqa: SIM115, ASYNC230 - for the run
    try:
        if await bed.db.fetchval("SELECT count(*) FROM jobs") != args.rows:
            await bed.wipe()
            print(f"== fill {args.rows:,} finished jobs", flush=True)
            await fill(bed.db, args.rows, lambda text: print(text, flush=True))
        key, _ = await ApiKeyStore(bed.db).create("bench-console", ["admin"], None)
        server = ApiServer(target, log)
        try:
            await server.ready()
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30, headers={
                    "Authorization": f"Bearer {key}"}) as client:
                served = await fragments(client, args.times)
            seen = await browser(server.base_url, key, args.times)
        finally:
            await server.stop()
    finally:
        await bed.close()
        log.close()
    return report(args, served, seen)


def report(args: argparse.Namespace, served: dict[str, dict[str, float]],
           seen: dict[str, dict[str, float]]) -> str:
    lines = [f"### Console with {args.rows:,} jobs ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
             "", "| measured | p50 ms | p95 ms |", "|---|---:|---:|"]
    lines += [f"| fragment {name} | {f['p50_ms']} | {f['p95_ms']} |"
              for name, f in served.items()]
    lines += [f"| Chromium: {name} | {f['p50_ms']} | {f['p95_ms']} |"
              for name, f in seen.items()]
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    publish(asyncio.run(run(args)), args.append)


if __name__ == "__main__":
    main()
