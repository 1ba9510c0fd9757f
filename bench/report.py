"""The printed tables: our figures against the targets, a row in the peer harness's
format (to set beside ``../shared/peers``' table), and the cost of every step per job."""

from __future__ import annotations

from typing import Any


def _fmt(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def _get(results: dict[str, Any], path: str) -> Any:
    node: Any = results
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def targets_table(r: dict[str, Any]) -> list[str]:
    rows = ["| workload | result | target | met? | PG xacts/job | WAL flushes/job "
            "| Redis calls/job | Redis cmds/job (in scripts too) | box busy (cores) | load1 |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]

    def row(label: str, key: str, result: str, target: str = "", ok: bool | None = None
            ) -> None:
        step = r.get(key)
        if step is None:
            return
        per = _get(step, "cost.per_job") or {}
        cost = step.get("cost", {})
        met = "" if ok is None else ("yes" if ok else "**no**")
        rows.append(f"| {label} | {result} | {target} | {met} | {per.get('commits', '—')} "
                    f"| {per.get('wal_syncs', '—')} "
                    f"| {per.get('redis_calls', '—')} | {per.get('redis_cmds', '—')} "
                    f"| {cost.get('busy_cores', '—')} | {cost.get('load1', '—')} |")

    def rate(key: str) -> str:
        return f"{_fmt(_get(r, key + '.jobs_per_s'))} jobs/s"

    row("enqueue one at a time, library (`JobService.create`)", "enqueue_single",
        rate("enqueue_single"))
    if "http_single" in r:
        row("enqueue one at a time, HTTP `POST /api/v1/jobs` (uvicorn)", "http_single",
            rate("http_single") + f"; server CPU {_get(r, 'http_single.server_cpu_s')} s, "
            f"client CPU {_get(r, 'http_single.driver_cpu_s')} s")
    b = _get(r, "enqueue_batch.jobs_per_s")
    row("batch enqueue, library (`create_many`, 1,000 per call)", "enqueue_batch",
        rate("enqueue_batch"), ">= 30,000", b is not None and b >= 30_000)
    hb = _get(r, "http_batch.jobs_per_s")
    if hb is not None:
        row("batch enqueue, HTTP `POST /api/v1/jobs/batch` (1,000 per call)", "http_batch",
            rate("http_batch") + f"; server CPU {_get(r, 'http_batch.server_cpu_s')} s",
            ">= 30,000", hb >= 30_000)
    for key in sorted((k for k in r if k.startswith("drain_")), key=lambda k: int(k[6:])):
        c = int(key[6:])
        v = r[key]
        target, ok = (">= 5,000", v["jobs_per_s"] >= 5000) if c == 100 else ("", None)
        row(f"drain of {_fmt(r.get('n'))} no-op jobs, concurrency {c}", key,
            f"{_fmt(v['jobs_per_s'])} jobs/s (all settled in PG: "
            f"{_fmt(v['settled_per_s'])}/s; start-up {v['startup_s']} s; worker CPU "
            f"{v['worker_cpu_ms_per_job']} ms/job while draining; CPU s in all: worker "
            f"{v['worker_cpu_s']}, its PG backends {v.get('pg_backends_cpu_s', '—')}, "
            f"Redis {_get(v, 'cost.redis_cpu_s')})", target, ok)
    lat = r.get("latency")
    if lat:
        # An open-loop test means something only while the sender keeps to its schedule.
        held = lat["achieved_rate"] >= 0.95 * r.get("rate", 200.0)
        note = "" if held else (" **the sender fell behind the schedule: these latencies "
                                "include queueing at the sender's side, rerun on a quieter "
                                "box**")
        row(f"pickup latency at {lat['achieved_rate']:g} jobs/s open loop, "
            f"{lat['n']:,} jobs (p50 / p95 / p99)", "latency",
            f"{lat['p50_ms']} / {lat['p95_ms']} / {lat['p99_ms']} ms (max {lat['max_ms']}, "
            f"mean {lat['mean_ms']}; sender max behind {lat['max_behind_ms']} ms; of which "
            f"the enqueue call itself p50 / p99 / max {lat.get('enqueue_p50_ms', '—')} / "
            f"{lat.get('enqueue_p99_ms', '—')} / {lat.get('enqueue_max_ms', '—')} ms){note}",
            "p99 <= 3 ms, max <= 10 ms", lat["p99_ms"] <= 3.0 and lat["max_ms"] <= 10.0)
    late = r.get("scheduled")
    if late:
        row(f"scheduled jobs: lateness (start - scheduled_at) with {late['rate']:g} jobs/s "
            f"due, {late['n']:,} jobs (p50 / p95 / p99)", "scheduled",
            f"{late['p50_ms']} / {late['p95_ms']} / {late['p99_ms']} ms (max "
            f"{late['max_ms']}, min {late['min_ms']})", "p99 <= 50 ms",
            late["p99_ms"] <= 50.0)
    rss = r.get("peak_rss_mb")
    if rss is not None:
        rows.append(f"| worker peak RSS (VmHWM, max over the drain and latency workers) "
                    f"| {rss} MB | <= 60 MB | {'yes' if rss <= 60 else '**no**'} "
                    "| | | | | | |")
    return rows


def peers_row(r: dict[str, Any], name: str, version: str) -> list[str]:
    """Our figures with the peer harness's column headings."""
    lat = r.get("latency") or {}
    cells = [name, version, _fmt(_get(r, "enqueue_single.jobs_per_s")),
             _fmt(_get(r, "enqueue_batch.jobs_per_s")),
             _fmt(_get(r, "drain_10.jobs_per_s")), _fmt(_get(r, "drain_100.jobs_per_s")),
             _fmt(lat.get("p50_ms"), 1), _fmt(lat.get("p95_ms"), 1),
             _fmt(lat.get("p99_ms"), 1), _fmt(r.get("peak_rss_mb"))]
    return ["| peer | version | W1 single/s | W1 batch/s | W2@10 jobs/s | W2@100 jobs/s "
            "| W3 p50 ms | W3 p95 ms | W3 p99 ms | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|---|",
            "| " + " | ".join(cells) + " |"]


def redis_breakdown(r: dict[str, Any]) -> list[str]:
    """Per step, the Redis commands per job by name (the busiest first)."""
    rows = []
    for key, step in r.items():
        if not isinstance(step, dict) or "cost" not in step:
            continue
        n = step.get("jobs")
        if not n:
            continue
        parts = [f"{cmd} {calls / n:.2f}" for cmd, calls in step["cost"]["redis"].items()
                 if calls / n >= 0.01]
        rows.append(f"- {key}: " + (", ".join(parts) or "none"))
    return rows


def render(r: dict[str, Any], header: list[str], version: str) -> str:
    out = [*header, "", *targets_table(r), "",
           "Beside the peer harness's table (same columns, same method):", "",
           *peers_row(r, "ajs (ours)", version), "",
           "Redis commands per job, by command (inside Lua scripts included):", "",
           *redis_breakdown(r)]
    return "\n".join(out)


def publish(text: str, append: str | None) -> None:
    """Print a run's markdown section, and append it to ``append`` when given."""
    print(text)
    if append:
        with open(append, "a") as f:
            f.write("\n" + text)
