"""Where a job's pickup goes, stage by stage (opt-in: ``BENCH_STAGES=1``).

A profiler for the latency step, not part of the worker: when the environment asks for it,
the benchmark's job module (``bench.jobs``) calls :func:`install` in the worker process,
which wraps the few calls on a job's way from the queue to its handler with wall-clock
stamps (``time.time()``, the clock the client stamps ``t_enq`` with):

- ``wake``: the idle wait's ``BLPOP`` came back (a push's signal);
- ``claim_sent`` / ``claim_ret``: the claim script was sent / its jobs came back;
- ``open_called`` / ``begin_sent`` / ``begin_ret`` / ``update_sent`` / ``open_ret``: the
  start (``JobStore.claim_open``) was called, ``BEGIN`` sent and answered (through
  asyncpg's ``Transaction``, as before the BEGIN went ahead), the ``UPDATE ... RETURNING``
  sent and answered;
- ``handler``: the handler's first statement.

Beside them, what else happened on the worker's event loop (settle commits, Redis moves,
heartbeats, lease recovery, garbage collections, and stalls of the loop seen by a 2 ms
ticker), so that the slowest pickups can be matched with what ran meanwhile. Everything is
kept in memory and written once, as ``stages.json`` in ``BENCH_OUT``, when the last counted
job has started: nothing touches the stores under test. The wrappers cost a few
microseconds per call and the ticker about 500 wake-ups a second: enough to change the
figures slightly, so the paired before/after runs leave it off.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import json
import os
import time
from typing import Any

ENABLED = os.environ.get("BENCH_STAGES") == "1"
TICK = 0.002  # the stall ticker's period (s)
STALL = 0.0015  # a tick this much late is recorded as a stall (s)

_jobs: dict[str, dict[str, float]] = {}  # job id -> its stamps
_events: list[tuple[str, float, float]] = []  # (what, start, end)
_last: dict[str, float] = {"wake": 0.0, "claim_ret": 0.0}
_open: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "bench_open", default=None)
_records: list[dict[str, float]] = []
_ticker: list[asyncio.Task[None]] = []
_gc_start = [0.0]


def install() -> None:
    """Wrap the worker's calls (once, in the worker process)."""
    from asyncpg.connection import Connection
    from asyncpg.transaction import Transaction

    from shared.queue.presence import Presence
    from shared.queue.redis_queue import RedisQueue
    from shared.store.jobs import JobStore
    from worker import upkeep

    def timed(name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.time()
            try:
                return await fn(*args, **kwargs)
            finally:
                _events.append((name, t0, time.time()))
        return wrapper

    wait_for_work = RedisQueue.wait_for_work

    async def wait(self: Any, seconds: float) -> bool:
        got = await wait_for_work(self, seconds)
        if got:
            _last["wake"] = time.time()
        return got

    claim = RedisQueue.claim

    async def claimed(self: Any, *args: Any, **kwargs: Any) -> Any:
        _start_ticker()
        sent = time.time()
        jobs, wake_in = await claim(self, *args, **kwargs)
        ret = time.time()
        woken = _last["wake"] if _last["wake"] > _last["claim_ret"] else 0.0
        for job_id, _, _ in jobs:
            _jobs[job_id] = {"wake": woken, "claim_sent": sent, "claim_ret": ret,
                             "prev_claim_ret": _last["claim_ret"]}
        _last["claim_ret"] = ret
        return jobs, wake_in

    claim_open = JobStore.claim_open

    async def opened(self: Any, job_ids: Any, *args: Any, **kwargs: Any) -> Any:
        stamps = {"open_called": time.time()}
        _open.set(stamps)
        rows, committed = await claim_open(self, job_ids, *args, **kwargs)
        stamps["open_ret"] = time.time()
        for job_id in job_ids:
            _jobs.setdefault(str(job_id), {}).update(stamps)
        if committed is not None:
            t0 = stamps["begin_ret"] if "begin_ret" in stamps else stamps["open_called"]
            committed.add_done_callback(
                lambda _: _events.append(("start commit", t0, time.time())))
        return rows, committed

    start = Transaction.start
    fetch = Connection.fetch

    async def fetched(self: Any, *args: Any, **kwargs: Any) -> Any:
        stamps = _open.get()
        if stamps is not None and "update_sent" not in stamps:
            stamps["update_sent"] = time.time()
        return await fetch(self, *args, **kwargs)

    async def begun(self: Any) -> None:
        stamps = _open.get()
        if stamps is not None:
            stamps["begin_sent"] = time.time()
        await start(self)
        if stamps is not None:
            stamps["begin_ret"] = time.time()

    RedisQueue.wait_for_work = wait  # type: ignore[method-assign]
    RedisQueue.claim = claimed  # type: ignore[method-assign]
    JobStore.claim_open = opened  # type: ignore[method-assign]
    Transaction.start = begun  # type: ignore[method-assign]
    Connection.fetch = fetched  # type: ignore[method-assign]
    JobStore.settle = timed("settle", JobStore.settle)  # type: ignore[method-assign]
    RedisQueue.move = timed("redis move", RedisQueue.move)  # type: ignore[method-assign]
    RedisQueue.heartbeat = timed(  # type: ignore[method-assign]
        "heartbeat", RedisQueue.heartbeat)
    Presence.beat = timed("presence", Presence.beat)  # type: ignore[method-assign]
    upkeep.recover = timed("lease recovery", upkeep.recover)  # type: ignore[attr-defined]
    gc.callbacks.append(_gc)


def _gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_start[0] = time.time()
    else:
        _events.append((f"gc gen{info['generation']}", _gc_start[0], time.time()))


def _start_ticker() -> None:
    if not _ticker:
        _ticker.append(asyncio.get_running_loop().create_task(_tick()))


async def _tick() -> None:
    while True:
        due, cpu = time.time() + TICK, time.process_time()
        await asyncio.sleep(TICK)
        late = time.time() - due
        if late > STALL:
            # Busy: the loop ran our own code for most of the stall; else the process
            # waited for a core (or in a system call).
            busy = time.process_time() - cpu >= 0.5 * (TICK + late)
            _events.append(("loop stall (busy)" if busy else "loop stall (no CPU)", due,
                            due + late))


def record(job_id: str, t_enq: float) -> None:
    """The handler's first statement: the job's stamps are complete."""
    stamps = _jobs.pop(job_id, {})
    stamps["handler"] = time.time()
    stamps["t_enq"] = t_enq
    _records.append(stamps)


def dump(out: str) -> None:
    tmp = os.path.join(out, "stages.tmp")
    with open(tmp, "w") as f:
        json.dump({"jobs": _records, "events": _events}, f)
    os.replace(tmp, os.path.join(out, "stages.json"))


def load(path: str) -> dict[str, Any]:
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data


# --- the driver's side: join with the client's stamps, summarise ---------------------------

STAGES = [
    # (name, from, to); the first is the client's own
    ("enqueue call (INSERT commit + push)", "t_enq", "t_ret"),
    ("push returned -> claim returned", "t_ret", "claim_ret"),
    ("  of which: push returned -> woken (BLPOP back)", "t_ret", "wake"),
    ("  of which: woken -> claim sent", "wake", "claim_sent"),
    ("  of which: claim script round trip", "claim_sent", "claim_ret"),
    ("claim returned -> start called (task switch)", "claim_ret", "open_called"),
    ("start called -> UPDATE sent (acquire, BEGIN unless begun ahead)", "open_called",
     "update_sent"),
    ("  of which: BEGIN round trip (asyncpg's Transaction)", "begin_sent", "begin_ret"),
    ("UPDATE ... RETURNING round trip", "update_sent", "open_ret"),
    ("start returned -> handler called", "open_ret", "handler"),
    ("worker's share: push returned -> handler", "t_ret", "handler"),
    ("pickup: t_enq -> handler", "t_enq", "handler"),
]


def summarise(data: dict[str, Any], returned: dict[float, float], pct: Any) -> str:
    jobs = data["jobs"]
    for j in jobs:
        if j["t_enq"] in returned:
            j["t_ret"] = returned[j["t_enq"]]
    lines = ["| stage | n | p50 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|"]
    for name, a, b in STAGES:
        xs = sorted((j[b] - j[a]) * 1000 for j in jobs if j.get(a) and j.get(b))
        if xs:
            lines.append(f"| {name} | {len(xs)} | {pct(xs, 50):.2f} | {pct(xs, 99):.2f} | "
                         f"{xs[-1]:.2f} |")
    woken = sum(1 for j in jobs if j.get("wake"))
    early = sum(1 for j in jobs if j.get("t_ret") and j.get("claim_sent")
                and j["claim_sent"] < j["t_ret"])
    lines.append(f"\n{woken} of {len(jobs)} jobs claimed after a BLPOP wake; {early} by a "
                 "claim sent before their enqueue call returned.")
    events = data["events"]
    by_kind: dict[str, list[float]] = {}
    for kind, t0, t1 in events:
        by_kind.setdefault(kind, []).append((t1 - t0) * 1000)
    lines.append("\nOther work on the worker's loop: " + "; ".join(
        f"{k} x{len(v)} (p50 {pct(sorted(v), 50):.2f}, max {max(v):.2f} ms)"
        for k, v in sorted(by_kind.items())))
    lines.append("\nThe ten slowest pickups (ms from t_enq; stage spans; what overlapped):")
    slow = sorted((j for j in jobs if j.get("t_ret")), key=lambda j: j["t_enq"] - j["handler"])
    for j in slow[:10]:
        t = j["t_enq"]
        spans = ", ".join(f"{b}+{(j[b] - t) * 1000:.1f}" for _, _, b in STAGES[:11]
                          if j.get(b) and b != "t_enq")
        spans = ", ".join(dict.fromkeys(spans.split(", ")))
        over = [f"{k} {(t0 - t) * 1000:.1f}..{(t1 - t) * 1000:.1f}" for k, t0, t1 in events
                if t0 < j["handler"] and t1 > t and k != "start commit"]
        lines.append(f"- {(j['handler'] - t) * 1000:.1f} ms: {spans}; "
                     f"overlapping: {'; '.join(over) or 'nothing recorded'}")
    return "\n".join(lines)
