"""The worker pool: claim, run, settle.

One asyncio process runs up to ``concurrency`` jobs at once. The life of a job here:

1. **claim**: a Lua script moves up to "free slots" jobs from the ready queues to the
   lease set (priority first, limits honoured); their Redlock locks are taken; PostgreSQL
   starts the attempt (``attempts + 1``: the fencing token).
2. **run**: the handler runs under the job's timeout, cancellable at any await.
3. **settle**: the outcome (completed, retry later, dead letter, cancelled) is written
   under the fencing token, in a group commit with other finished jobs, and the job
   leaves the lease set.

Around that loop: a heartbeat extends leases and locks and picks up cancel requests, a
listener hears cancels at once, a reaper recovers the jobs of dead workers, and on
SIGTERM the pool stops claiming, lets running jobs finish within the grace period, and
hands the rest back without spending an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import asyncpg
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from shared.connections import Stores
from shared.core.backoff import retry_delay
from shared.core.status import Status
from shared.maintenance import recover_expired
from shared.observability import metrics
from shared.observability.logs import JobLog, get_logger
from shared.queue.redis_queue import ready_score, wall_ms
from shared.registry import JobContext, JobType, PermanentError, Registry, RetryableError
from shared.settings import Settings
from shared.store.jobs import Outcome
from worker.settler import Settler

log = get_logger("worker")

# What a store outage looks like from here: the loops log it, wait, and carry on.
STORE_ERRORS = (RedisError, OSError, TimeoutError, asyncpg.PostgresError,
                asyncpg.InterfaceError)


@dataclass(slots=True)
class Attempt:
    job_id: str
    job_type: str
    handler: JobType | None
    row: asyncpg.Record
    number: int  # the attempt number, which is also the fencing token
    task: asyncio.Task[None] | None = None
    stop: str | None = None  # why we cancelled the task: "cancel", "release" or "lost"


class Worker:
    def __init__(self, settings: Settings, registry: Registry,
                 stores: Stores | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.stores = stores or Stores(settings)
        self.queue = self.stores.queue(settings.queue)
        self.types = registry.limits(settings.queue)
        self.limited = {t.job_type for t in self.types if t.concurrency}
        self.token = self.stores.locks.new_token(settings.worker_id)
        # One Redis node (the default): each job's lock lives beside the queue and is
        # taken, extended and released inside the queue's own scripts, which saves two
        # round trips a batch. Several lock nodes: a separate Redlock over them.
        self.inline_locks = settings.lock_urls == [settings.redis_url]
        self.lock_token = self.token if self.inline_locks else ""
        # Every attempt not yet settled, by job id (the heartbeat keeps their leases).
        self.running: dict[str, Attempt] = {}
        # Slots: handlers running plus jobs claimed whose start is in flight. A finished
        # handler frees its slot at once; its outcome joins the group commit, and claiming
        # pauses only while more than ``concurrency`` outcomes wait to be written.
        self._busy = 0
        self._settling = 0
        self._claim_max = max(1, (settings.worker_concurrency + 1) // 2)
        self._starts: set[asyncio.Task[None]] = set()
        self.resources: dict[str, Any] = {}
        self.ready = False  # connected and claiming (for the readiness probe)
        self._released: list[Attempt] = []
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._settler = Settler(self._write_outcomes, settings.settle_batch_max)
        self._background: list[asyncio.Task[None]] = []
        self._closed = False  # the background loops end (a client library may swallow a
        # cancellation into a connection error, which the loops would otherwise ride out)

    def stop(self) -> None:
        """Begin a graceful shutdown (SIGTERM): stop claiming, then drain."""
        self._stopping.set()

    # --- the main loop -----------------------------------------------------------------------

    async def run(self) -> None:
        self._pool = await self.stores.pool()
        self._store = await self.stores.store()
        self._settler.start()
        for loop in (self._heartbeat_loop, self._cancel_listener, self._reaper_loop):
            self._background.append(asyncio.create_task(loop(), name=loop.__name__))
        log.info("worker started", extra={"worker_id": self.settings.worker_id,
                                          "queue": self.settings.queue,
                                          "concurrency": self.settings.worker_concurrency,
                                          "job_types": [t.job_type for t in self.types]})
        metrics.worker_active.set(1)
        try:
            await self._claim_loop()
        finally:
            self.ready = False
            metrics.worker_active.set(0)
            await self._drain()

    async def _claim_loop(self) -> None:
        concurrency = self.settings.worker_concurrency
        while not self._stopping.is_set():
            # At most half the slots per claim, so that one batch's settle overlaps the
            # next batch's claim instead of the pool alternating between the two.
            free = min(concurrency - self._busy, self._claim_max)
            if free <= 0 or self._settling >= concurrency:
                self._slot_freed.clear()
                await self._until_stopping(self._slot_freed.wait())
                continue
            try:
                claimed, wake_in = await self.queue.claim(
                    free, self.settings.lease_seconds, self.types,
                    lock_token=self.lock_token)
                self.ready = True
                for job_type, limit in self.queue.held:
                    metrics.rate_limit_waits_total.labels(job_type, limit).inc()
            except STORE_ERRORS as exc:
                self.ready = False
                log.warning("claim failed, retrying", extra={"error": str(exc)})
                await self._until_stopping(asyncio.sleep(1.0))
                continue
            if claimed:
                # Start them in the background: the next claim need not wait for this
                # batch's commit in PostgreSQL.
                self._busy += len(claimed)
                task = asyncio.create_task(self._start(claimed))
                self._starts.add(task)
                task.add_done_callback(self._starts.discard)
                continue
            idle = self.settings.idle_poll_seconds
            timeout = idle if wake_in is None else min(wake_in, idle)
            with contextlib.suppress(*STORE_ERRORS):
                await self._until_stopping(self.queue.wait_for_work(timeout))

    async def _start(self, claimed: list[tuple[str, str, int]]) -> None:
        """Lock (unless the claim script did), start the attempts in PostgreSQL, then
        spawn a task per job. Holds one slot per claimed job until it knows which start."""
        try:
            await self._start_attempts(claimed)
        finally:
            self._busy -= len(claimed)
            self._slot_freed.set()

    async def _start_attempts(self, claimed: list[tuple[str, str, int]]) -> None:
        fresh = [c for c in claimed if c[0] not in self.running]
        if not fresh:
            return
        ids = [c[0] for c in fresh]
        try:
            held, busy = ids, dict[str, float]()
            if not self.inline_locks:
                held, busy = await self.stores.locks.acquire(ids, self.token,
                                                             self.settings.lease_seconds)
            rows = await self._store.claim(held, self.settings.worker_id)
        except STORE_ERRORS as exc:
            # The jobs stay in our lease set; if we cannot reach the stores they come back
            # to the queue when the lease expires.
            log.warning("could not start claimed jobs", extra={"error": str(exc)})
            await self._until_stopping(asyncio.sleep(1.0))
            return
        started = {str(r["id"]): r for r in rows}
        for job_id, row in started.items():
            att = Attempt(job_id, row["job_type"], self.registry.get(row["job_type"]), row,
                          row["attempts"])
            self.running[job_id] = att
            self._busy += 1  # released by the attempt when its handler returns
            att.task = asyncio.create_task(self._attempt(att), name=f"job-{job_id}")
        now = wall_ms()
        moves: list[tuple[str, str, str, int, int]] = []
        for job_id, job_type, score in fresh:
            if job_id in busy:  # an earlier holder's lock is still live: wait it out
                moves.append((job_id, job_type, "delay", score,
                              now + int(busy[job_id] * 1000) + 1))
            elif job_id not in started:  # cancelled meanwhile, or a stale duplicate
                moves.append((job_id, job_type, "drop", score, 0))
        if moves:
            try:
                await self.queue.move(moves, self.lock_token)
                if not self.inline_locks:
                    await self.stores.locks.release(
                        [m[0] for m in moves if m[2] == "drop"], self.token)
            except STORE_ERRORS as exc:  # left in our lease set: recovered when it expires
                log.warning("could not hand back unstarted jobs", extra={"error": str(exc)})

    # --- one attempt ---------------------------------------------------------------------------

    async def _attempt(self, att: Attempt) -> None:
        started = time.perf_counter()
        metrics.jobs_processing.inc()
        outcome: Outcome | None = None
        try:
            outcome = await self._execute(att)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if att.stop is None:
                raise  # cancelled by someone else: the event loop is going away
            if task is not None:
                task.uncancel()
            if att.stop == "cancel":
                outcome = Outcome(att.row["id"], att.number, Status.CANCELLED,
                                  reason="cancelled while running",
                                  error="cancelled while running")
            elif att.stop == "release":
                self._released.append(att)
        finally:
            metrics.jobs_processing.dec()
            self._busy -= 1  # the handler is done: its slot can take the next job
            self._settling += 1
            self._slot_freed.set()
        try:
            if outcome is not None:
                elapsed = time.perf_counter() - started
                _metrics_of(att.job_type).duration.observe(elapsed)
                written = await self._settler.submit(outcome)
                self._count(att, outcome, written)
        finally:
            self._settling -= 1
            if att.stop != "release":
                self.running.pop(att.job_id, None)
            self._slot_freed.set()

    async def _execute(self, att: Attempt) -> Outcome:
        row, jt = att.row, att.handler
        job_id = row["id"]
        if row["cancel_requested"]:
            return Outcome(job_id, att.number, Status.CANCELLED, reason="cancelled before start")
        if jt is None:
            return self._failed(att, f"no handler for job type {att.job_type!r}", permanent=True)
        try:
            payload = jt.parse(row["payload"])
        except ValidationError as exc:
            return self._failed(att, f"payload no longer valid: {exc}", permanent=True)
        if att.number == 1:
            due = row["scheduled_at"] or row["created_at"]
            wait = max((datetime.now(UTC) - due).total_seconds(), 0.0)
            _metrics_of(att.job_type).wait.observe(wait)
        jlog = JobLog(log, att.job_id, att.job_type, att.number)
        ctx = JobContext(att.job_id, att.job_type, att.number, row["max_retries"],
                         row["timeout_seconds"], self.settings, self._pool, self.stores.redis,
                         jlog, self.resources)
        try:
            async with asyncio.timeout(row["timeout_seconds"]):
                result = await jt.handler(payload, ctx)
        except TimeoutError:
            return self._failed(att, f"timed out after {row['timeout_seconds']:g} s")
        except PermanentError as exc:
            return self._failed(att, f"{type(exc).__name__}: {exc}", permanent=True)
        except RetryableError as exc:
            return self._failed(att, f"{type(exc).__name__}: {exc}", retry_after=exc.retry_after)
        except Exception as exc:  # a handler bug or a transient fault: retry with backoff
            jlog.warning("attempt failed", extra={"error": repr(exc)})
            return self._failed(att, f"{type(exc).__name__}: {exc}")
        return Outcome(job_id, att.number, Status.COMPLETED, result=_jsonable(result))

    def _failed(self, att: Attempt, error: str, *, permanent: bool = False,
                retry_after: float | None = None) -> Outcome:
        job_id = att.row["id"]
        error = error.replace("\x00", "")[:4000]
        if permanent or att.number > att.row["max_retries"]:
            reason = "permanent error" if permanent else "retries exhausted"
            return Outcome(job_id, att.number, Status.FAILED, error=error, reason=reason)
        delay = retry_after
        if delay is None:
            delay = (retry_delay(att.number, self.settings, att.handler.backoff) if att.handler
                     else retry_delay(att.number, self.settings))
        run_at = datetime.now(UTC) + timedelta(seconds=delay)
        return Outcome(job_id, att.number, Status.RETRYING, error=error, run_at=run_at,
                       reason=f"retry in {delay:.3g} s")

    def _count(self, att: Attempt, outcome: Outcome, written: bool) -> None:
        if not written:
            log.warning("outcome fenced out: a newer attempt owns the job",
                        extra={"job_id": att.job_id, "job_type": att.job_type,
                               "attempt": att.number})
            return
        status = outcome.status
        counted = _metrics_of(att.job_type)
        counted.ended[status].inc()
        if status is Status.RETRYING:
            counted.retries.inc()
        elif status is Status.FAILED:
            counted.failed.inc()
            log.warning("job dead-lettered", extra={"job_id": att.job_id,
                                                    "job_type": att.job_type,
                                                    "attempt": att.number,
                                                    "error": outcome.error})

    # --- settle (called by the settler with a batch) ------------------------------------------

    async def _write_outcomes(self, outcomes: list[Outcome]) -> set[str]:
        rows = await self._store.settle(outcomes)
        written = {str(r["id"]): r for r in rows}
        moves: list[tuple[str, str, str, int, int]] = []
        for r in rows:
            if r["status"] == Status.RETRYING:
                due = int(r["run_at"].timestamp() * 1000)
                moves.append((str(r["id"]), r["job_type"], "delay",
                              ready_score(r["priority"], r["seq"]), due))
            else:
                moves.append((str(r["id"]), r["job_type"], "drop", 0, 0))
        # A fenced-out outcome leaves the job alone (a newer attempt owns it); only our
        # lock, if we still hold it, is released.
        if self.inline_locks:
            moves.extend((str(o.job_id), "_", "unlock", 0, 0) for o in outcomes
                         if str(o.job_id) not in written)
            await self.queue.move(moves, self.lock_token)
        else:
            await asyncio.gather(
                self.queue.move(moves),
                self.stores.locks.release([str(o.job_id) for o in outcomes], self.token))
        return set(written)

    # --- around the loop ------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.settings.heartbeat_interval)
            atts = [a for a in self.running.values() if a.stop is None]
            if not atts:
                continue
            try:
                await self._heartbeat(atts)
            except STORE_ERRORS as exc:
                log.warning("heartbeat failed", extra={"error": str(exc)})

    async def _heartbeat(self, atts: list[Attempt]) -> None:
        """Keep leases and locks of running jobs; stop those another worker now owns,
        and those whose cancel was requested."""
        kept = {a.job_id for a in atts}
        if not self.inline_locks:
            kept = set(await self.stores.locks.extend(list(kept), self.token,
                                                      self.settings.lease_seconds))
        cancels, lost = await self.queue.heartbeat(
            [(a.job_id, a.job_type, a.job_type in self.limited)
             for a in atts if a.job_id in kept],
            self.settings.lease_seconds, self.lock_token)
        for a in atts:
            if a.job_id not in kept or a.job_id in lost:
                log.warning("lock lost, abandoning attempt",
                            extra={"job_id": a.job_id, "job_type": a.job_type,
                                   "attempt": a.number})
                self._interrupt(a, "lost")
        for job_id in cancels:
            self.cancel(job_id)

    async def _cancel_listener(self) -> None:
        while not self._closed:
            try:
                async with self.stores.redis.pubsub() as ps:
                    await ps.subscribe(self.queue.cancel_channel)
                    while not self._closed:
                        msg = await ps.get_message(ignore_subscribe_messages=True, timeout=None)
                        if msg and msg.get("type") == "message":
                            self.cancel(str(msg["data"]))
            except STORE_ERRORS as exc:
                log.warning("cancel listener reconnecting", extra={"error": str(exc)})
                await asyncio.sleep(1.0)

    def cancel(self, job_id: str) -> None:
        """Stop a running job at its next await; it settles as CANCELLED."""
        att = self.running.get(job_id)
        if att is not None:
            self._interrupt(att, "cancel")

    def _interrupt(self, att: Attempt, why: str) -> None:
        if att.stop is None and att.task is not None and not att.task.done():
            att.stop = why
            att.task.cancel()

    async def _reaper_loop(self) -> None:
        interval = self.settings.reap_interval_seconds
        while not self._closed:
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            try:
                summary = await recover_expired(self._store, self.queue)
                if summary.recovered or summary.dead_lettered or summary.cancelled:
                    metrics.lease_recoveries_total.labels("requeued").inc(summary.recovered)
                    metrics.lease_recoveries_total.labels("dead_letter").inc(
                        summary.dead_lettered)
                    log.warning("recovered expired leases", extra=vars(summary))
            except STORE_ERRORS as exc:
                log.warning("lease recovery failed", extra={"error": str(exc)})

    async def _until_stopping(self, aw: Any) -> None:
        """Await ``aw`` unless a shutdown begins first (then abandon it)."""
        task = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, stopper):
                if not t.done():
                    t.cancel()
            await asyncio.gather(task, stopper, return_exceptions=True)
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            raise exc

    # --- shutdown ------------------------------------------------------------------------------

    async def _drain(self) -> None:
        grace = self.settings.shutdown_grace_seconds
        if self._starts:  # claims whose start is in flight join the running jobs first
            await asyncio.wait(self._starts)
        tasks = [a.task for a in self.running.values() if a.task is not None]
        if tasks:
            log.info("draining", extra={"running": len(tasks), "grace_seconds": grace})
            await asyncio.wait(tasks, timeout=grace)
        leftovers = [a for a in self.running.values() if a.task and not a.task.done()]
        for att in leftovers:
            self._interrupt(att, "release")
        if leftovers:
            await asyncio.wait([a.task for a in leftovers if a.task is not None])
        await self._settler.stop()
        if self._released:
            await self._release(self._released)
        self._closed = True
        for t in self._background:
            t.cancel()
        _, stuck = await asyncio.wait(self._background, timeout=5.0)
        if stuck:
            log.warning("background tasks did not stop", extra={
                "tasks": sorted(t.get_name() for t in stuck)})
        await self.stores.close()
        log.info("worker stopped", extra={"released": len(self._released)})

    async def _release(self, atts: list[Attempt]) -> None:
        """Hand unfinished jobs back to the queue with their attempt count unchanged."""
        rows = await self._store.release(
            [(uuid.UUID(a.job_id), a.number) for a in atts], "worker shut down before finishing")
        moves = [(str(r["id"]), r["job_type"], "ready", ready_score(r["priority"], r["seq"]), 0)
                 for r in rows]
        await self.queue.move(moves, self.lock_token)
        if not self.inline_locks:
            await self.stores.locks.release([a.job_id for a in atts], self.token)
        for a in atts:
            self.running.pop(a.job_id, None)


class _TypeMetrics(NamedTuple):
    duration: Any
    wait: Any
    ended: dict[Status, Any]
    retries: Any
    failed: Any


@functools.cache
def _metrics_of(job_type: str) -> _TypeMetrics:
    """One job type's labelled metrics, looked up once: ``labels()`` takes a lock and
    builds a key on every call, on the hot path of every job."""
    return _TypeMetrics(
        metrics.job_duration_seconds.labels(job_type),
        metrics.job_wait_seconds.labels(job_type),
        {s: metrics.jobs_completed_total.labels(job_type, s.value)
         for s in (Status.COMPLETED, Status.RETRYING, Status.FAILED, Status.CANCELLED)},
        metrics.job_retries_total.labels(job_type),
        metrics.jobs_failed_total.labels(job_type),
    )


def _jsonable(result: Any) -> Any:
    """Handler results are stored as jsonb: coerce what json cannot take, drop NULs."""
    if result is None:
        return None
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json")
    text = json.dumps(result, default=str)
    if "\\u0000" in text:
        text = text.replace("\\u0000", "")
    return json.loads(text)
