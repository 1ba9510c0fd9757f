"""The life of a job, in one place. Every transition writes PostgreSQL, then Redis.

::

    enqueue ─> PENDING ─promote─> QUEUED ─start─> PROCESSING ─settle─> COMPLETED
                 (later)            ▲  ▲              │  │ └──────────> RETRYING ─(due)─> start
                                    │  └─ redrive ─ FAILED <──────────────┤
                                    └── release (shutdown, attempt refunded), recover (lease lost)
    cancel: PENDING, QUEUED, RETRYING -> CANCELLED at once; PROCESSING: flagged, the worker
            told, and the attempt's outcome becomes CANCELLED whatever it was
    fire:   a recurring schedule's due fire times -> new jobs (QUEUED, due at their fire
            time), and its watermark moved, in one transaction
    start of a schedule run that skips overlaps, while an earlier run is PROCESSING:
            -> CANCELLED at once ("skipped"), its handler never called

Each rule is written once:

- **PostgreSQL first, Redis after.** A transition commits in PostgreSQL (the source of
  truth), then places the job in Redis. A Redis failure after the commit never undoes or
  holds back the commit: the placement is retried on its own, and the reconcile pass
  rebuilds whatever Redis still lacks from PostgreSQL.
- **An attempt ends in an** :class:`Outcome`, written under its fencing token (the attempt
  number): a late attempt whose lease was recovered writes nothing.
- **The dead-letter rule** is :meth:`Outcome.after_failure`: a permanent error, or an
  attempt beyond ``max_retries``, goes to the dead letter queue (FAILED); anything else is
  tried again.
- **The cancel rule** lives in the settle statement (``JobStore.settle``): a job whose cancel
  was accepted ends CANCELLED, whatever its attempt's outcome (a result it produced is kept).
  It is in SQL because a cancel may land at any moment before the outcome commits.
- **Where a job goes in Redis** after a transition is :meth:`Move.after`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from redis.exceptions import RedisError

from shared.core import schedules as cron
from shared.core.status import Status
from shared.observability import metrics
from shared.observability.logs import get_logger
from shared.queue.redis_queue import Placement, RedisQueue, epoch_ms, ready_score, wall_ms
from shared.store.jobs import JobStore, NewJob, Row
from shared.store.schedules import ScheduleStore, label

log = get_logger("lifecycle")

# What a Redis outage looks like from here (redis-py wraps socket errors, but not all).
REDIS_DOWN = (RedisError, OSError, TimeoutError)


# --- how an attempt ended ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended, to be written under its fencing token (``attempt``)."""

    job_id: uuid.UUID
    attempt: int
    status: Status  # COMPLETED, RETRYING, FAILED, CANCELLED or QUEUED
    result: Any = None
    error: str | None = None
    run_at: datetime | None = None  # when a RETRYING job is due again
    reason: str | None = None
    refund: bool = False  # handed back unfinished: the attempt does not count

    @classmethod
    def completed(cls, job_id: uuid.UUID, attempt: int, result: Any = None) -> Outcome:
        return cls(job_id, attempt, Status.COMPLETED, result=result)

    @classmethod
    def cancelled(cls, job_id: uuid.UUID, attempt: int, reason: str) -> Outcome:
        return cls(job_id, attempt, Status.CANCELLED, error=reason, reason=reason)

    @classmethod
    def released(cls, job_id: uuid.UUID, attempt: int,
                 reason: str = "worker shut down before finishing") -> Outcome:
        """Graceful shutdown: back to the queue, and the attempt is not spent."""
        return cls(job_id, attempt, Status.QUEUED, reason=reason, refund=True)

    @classmethod
    def after_failure(cls, job_id: uuid.UUID, attempt: int, max_retries: int, error: str, *,
                      permanent: bool = False, retry_at: datetime | None = None,
                      reason: str | None = None) -> Outcome:
        """The dead-letter rule. ``retry_at`` None means "again at once" (a lost lease)."""
        error = error.replace("\x00", "")[:4000]  # jsonb/text refuse NUL; keep rows small
        if permanent or attempt > max_retries:
            return cls(job_id, attempt, Status.FAILED, error=error,
                       reason=reason or ("permanent error" if permanent else "retries exhausted"))
        if retry_at is None:
            return cls(job_id, attempt, Status.QUEUED, error=error, reason=reason)
        delay = max((retry_at - datetime.now(UTC)).total_seconds(), 0.0)
        return cls(job_id, attempt, Status.RETRYING, error=error, run_at=retry_at,
                   reason=reason or f"retry in {delay:.3g} s")


# --- where a job goes in Redis -------------------------------------------------------------


Action = Literal["drop", "ready", "delay", "unlock"]


@dataclass(frozen=True, slots=True)
class Move:
    """One job out of the lease set and to where its state says (``move.lua``)."""

    job_id: str
    job_type: str
    action: Action
    score: int = 0
    due_ms: int = 0

    def args(self) -> tuple[str, str, str, int, int]:
        return (self.job_id, self.job_type, self.action, self.score, self.due_ms)

    @classmethod
    def drop(cls, job_id: uuid.UUID | str, job_type: str = "_") -> Move:
        """Finished, or not ours to place: forget it (lease, limits, cancel flag)."""
        return cls(str(job_id), job_type, "drop")

    @classmethod
    def unlock(cls, job_id: uuid.UUID | str) -> Move:
        """A newer attempt owns the job: only give back our lock, if we still hold it."""
        return cls(str(job_id), "_", "unlock")

    @classmethod
    def ready(cls, row: Row) -> Move:
        return cls(str(row["id"]), row["job_type"], "ready",
                   ready_score(row["priority"], row["seq"]))

    @classmethod
    def delay(cls, row: Row, due_ms: int) -> Move:
        return cls(str(row["id"]), row["job_type"], "delay",
                   ready_score(row["priority"], row["seq"]), due_ms)

    @classmethod
    def after(cls, row: Row) -> Move:
        """Where a job belongs once its new state is committed."""
        status = row["status"]
        if status == Status.RETRYING and row["run_at"] is not None:
            return cls.delay(row, epoch_ms(row["run_at"]))
        if status in (Status.QUEUED, Status.RETRYING):
            return cls.ready(row)
        return cls.drop(row["id"], row["job_type"])


@dataclass
class Settled:
    """What a settle committed: the rows written, and the Redis moves that follow."""

    rows: list[Row]
    moves: list[Move] = field(default_factory=list)

    @property
    def written(self) -> set[str]:
        return {str(r["id"]) for r in self.rows}


@dataclass
class Starting:
    """Attempts whose start is decided, and the commit that makes it durable."""

    rows: list[Row]
    # Raises if the start did not commit; None: committed before ``begin`` returned.
    committed: asyncio.Task[None] | None


@dataclass
class Fired:
    """What one fire made for one schedule."""

    schedule: str
    enqueued: int = 0
    skipped_misfire: int = 0
    next_fire_at: datetime | None = None


@dataclass
class Recovered:
    """What one lease-recovery pass did (River's rescuer result, in our words)."""

    requeued: int = 0
    dead_lettered: int = 0
    cancelled: int = 0

    @property
    def any(self) -> bool:
        return bool(self.requeued or self.dead_lettered or self.cancelled)


# --- the transitions -------------------------------------------------------------------------


class Lifecycle:
    """Every transition of a job, bound to one store and its Redis queues."""

    def __init__(self, store: JobStore, queue_of: Any) -> None:
        self.store = store
        self.queue_of = queue_of  # queue name -> RedisQueue

    # enqueue: a new row (QUEUED, or PENDING when due beyond the lookahead), then its push
    async def enqueue(self, jobs: Sequence[NewJob], *, all_or_nothing: bool = False
                      ) -> list[Row]:
        """Commit new jobs, then push them. Fewer rows than jobs: idempotency keys existed
        (with ``all_or_nothing`` nothing was written)."""
        rows = await self.store.insert(jobs, all_or_nothing=all_or_nothing)
        return await self._push(rows)

    async def enqueue_chunks(self, chunks: AsyncIterator[Sequence[NewJob]]) -> list[Row]:
        """Commit new jobs (without idempotency keys) as they are produced, all in one
        transaction, then push them: nothing is written if producing a chunk fails."""
        # Each chunk's placements are built as its rows come back, while PostgreSQL runs
        # the next chunk's INSERT (the loop would wait for it anyway), not after the commit.
        by_queue: dict[str, list[Placement]] = {}
        rows = await self.store.insert_chunks(
            chunks, made=lambda rows: _place(rows, by_queue))
        return await self._push(rows, by_queue)

    # promote: PENDING jobs due soon -> QUEUED, into the delayed set ahead of their time
    async def promote_due(self, horizon: datetime, limit: int) -> int:
        rows = await self.store.promote_due(horizon, limit)
        by_queue: dict[str, list[Placement]] = {}
        for r in rows:
            by_queue.setdefault(r["queue"], []).append(Placement.of(r))
        for name, placements in by_queue.items():
            # Not caught: promotion runs in the tick, which reports a Redis failure; the
            # committed QUEUED rows are re-placed by the same tick's reconcile, or the next.
            await self.queue_of(name).push(placements)
        return len(rows)

    # start: claimed in Redis -> PROCESSING in PostgreSQL (attempts + 1: the fencing token)
    async def start(self, queue: RedisQueue, claimed: Sequence[tuple[str, str, int]],
                    worker: str, *, busy: dict[str, float] | None = None,
                    lock_token: str = "") -> list[Row]:
        """Start attempts for the jobs a claim moved to our lease set; hand back in Redis
        those PostgreSQL no longer has waiting (cancelled meanwhile, stale duplicates) and
        those whose lock an earlier holder still has (``busy``: seconds left). Returns once
        the start is committed (see :meth:`begin` for the worker's pipelined start)."""
        starting = await self.begin(queue, claimed, worker, busy=busy, lock_token=lock_token)
        if starting.committed is not None:
            await starting.committed
        return starting.rows

    async def begin(self, queue: RedisQueue, claimed: Sequence[tuple[str, str, int]],
                    worker: str, *, busy: dict[str, float] | None = None,
                    lock_token: str = "", pipelined: bool = True) -> Starting:
        """:meth:`start`, pipelined: the rows come back as soon as PostgreSQL has decided
        which jobs start (the UPDATE ran in an open transaction that holds their rows),
        with the commit still in flight (``Starting.committed``). The attempts may run
        meanwhile; nothing may be written under their tokens until the commit succeeded
        (the worker's settle waits for it), and if it fails their outcomes are dropped
        and lease recovery decides from what PostgreSQL holds.

        ``pipelined=False``: the start is committed before this returns (one statement,
        no open transaction; ``Starting.committed`` is None)."""
        busy = busy or {}
        claimed_rows, committed = await self.store.claim_open(
            [c[0] for c in claimed if c[0] not in busy], worker, pipelined=pipelined)
        rows: list[Row] = list(claimed_rows)
        if any(r["skip_overlap"] and r["schedule_id"] for r in rows):
            # Skipping settles rows at once: that needs the start committed first.
            if committed is not None:
                await committed
            rows = await self._skip_overlapping(rows)
        started = {str(r["id"]) for r in rows}
        now = wall_ms()
        moves = [Move(job_id, job_type, "delay", score, now + int(busy[job_id] * 1000) + 1)
                 if job_id in busy else Move.drop(job_id, job_type)
                 for job_id, job_type, score in claimed if job_id not in started]
        if moves:
            try:
                await queue.move(moves, lock_token)
            except REDIS_DOWN as exc:  # left in our lease set: recovered when it expires
                log.warning("could not hand back unstarted jobs", extra={"error": repr(exc)})
        return Starting(rows, committed)

    async def _skip_overlapping(self, rows: list[Row]) -> list[Row]:
        """Schedule runs that skip overlaps are decided here, when they would start (not
        when they were made ahead of time): one whose earlier run is still PROCESSING ends
        CANCELLED at once, its handler never called. Returns the rows still to run (the
        skipped ones are handed back in Redis with the other unstarted jobs)."""
        blocked = await self.store.overlapping(rows)
        if not blocked:
            return rows
        skipped = [r for r in rows if str(r["id"]) in blocked]
        written = await self.store.settle([Outcome.cancelled(
            r["id"], r["attempts"],
            "skipped: the previous run of schedule "
            f"{blocked[str(r['id'])]} was still running (overlap: skip)") for r in skipped])
        for r in written:
            metrics.schedule_runs_worker_total.labels(
                blocked[str(r["id"])], "skipped_overlap").inc()
        log.info("schedule runs skipped: previous run still running",
                 extra={"jobs": sorted(blocked), "schedules": sorted(set(blocked.values()))})
        return [r for r in rows if str(r["id"]) not in blocked]

    # fire: a schedule's due fire times -> jobs, and its watermark moved, in one transaction
    async def fire(self, *, now: datetime, horizon: datetime, grace: float, max_runs: int,
                   limit: int, exclude: Sequence[uuid.UUID] = ()) -> list[tuple[uuid.UUID,
                                                                                Fired]]:
        """Make the runs of up to ``limit`` due schedules (at most ``max_runs`` each), then
        push them. PostgreSQL first: the runs and each schedule's new watermark commit
        together, so a fire time is never made twice nor skipped, whatever crashes where;
        the unique key (schedule_id, fire_time) refuses a duplicate even from a pass that
        read an old watermark. The Redis push comes after the commit (a failed push leaves
        the runs PENDING for the promote pass, like any enqueue)."""
        made: list[Row] = []
        fired: list[tuple[uuid.UUID, Fired]] = []
        async with self.store.acquire() as conn, conn.transaction():
            jobs, schedules = JobStore(conn), ScheduleStore(conn)
            for s in await schedules.lock_due(horizon, limit, exclude):
                try:
                    plan = cron.plan(s["cron"], s["timezone"], s["next_fire_at"], now=now,
                                     horizon=horizon, grace=grace, misfire=s["misfire"],
                                     end_at=s["end_at"], max_runs=max_runs)
                except cron.EVALUATION_ERRORS as exc:  # a row written around the API
                    log.error("schedule cannot be evaluated", extra={
                        "schedule": label(s["namespace"], s["name"]), "error": str(exc)})
                    fired.append((s["id"], Fired(label(s["namespace"], s["name"]),
                                                 next_fire_at=s["next_fire_at"])))
                    continue
                runs = [NewJob(job_type=s["job_type"], payload=s["payload"],
                               priority=s["priority"], max_retries=s["max_retries"],
                               timeout_seconds=s["timeout_seconds"], queue=s["queue"],
                               scheduled_at=t, schedule_id=s["id"], fire_time=t,
                               skip_overlap=s["overlap"] == "skip",
                               namespace=s["namespace"]) for t in plan.runs]
                rows = await jobs.insert_runs(runs) if runs else []
                await schedules.advance(s["id"], s["next_fire_at"], plan.next_fire_at)
                made.extend(rows)
                fired.append((s["id"], Fired(label(s["namespace"], s["name"]), len(rows),
                                             plan.skipped_misfire, plan.next_fire_at)))
        await self._push(made)
        return fired

    # settle: PROCESSING -> the outcome's state, fenced; then the Redis moves (separately)
    async def settle(self, outcomes: Sequence[Outcome]) -> Settled:
        """Commit outcomes in one statement. The caller places ``moves`` (``place``) on its
        own schedule: a Redis outage must not hold an outcome back from PostgreSQL."""
        rows = await self.store.settle(outcomes)
        settled = Settled(list(rows), [Move.after(r) for r in rows])
        written = settled.written
        settled.moves.extend(Move.unlock(o.job_id) for o in outcomes
                             if str(o.job_id) not in written)
        return settled

    async def place(self, queue: RedisQueue, moves: Sequence[Move], lock_token: str = ""
                    ) -> None:
        """The Redis half of a settle (or of a recovery). Raises on a Redis failure: the
        caller retries; a move never made is repaired by lease recovery and reconcile."""
        if moves:
            await queue.move(moves, lock_token)

    # recover: a lease that expired (worker presumed dead) -> QUEUED or FAILED (or CANCELLED)
    async def recover(self, queue: RedisQueue, limit: int = 1000) -> Recovered:
        """Settle the attempts whose lease expired with the dead-letter rule, then place
        each reaped job where its state says. Fenced: if the worker was only slow and
        settles at the same time, exactly one of the two writes."""
        done = Recovered()
        ids = await queue.reap(limit)
        if not ids:
            return done
        rows = await self.store.get_many([uuid.UUID(i) for i in ids])
        outcomes = [Outcome.after_failure(
            r["id"], r["attempts"], r["max_retries"],
            f"lease expired: worker {r['lease_owner'] or '?'} stopped heartbeating",
            reason="lease expired") for r in rows if r["status"] == Status.PROCESSING]
        settled = (await self.store.settle(outcomes)) if outcomes else []
        for r in settled:
            if r["status"] == Status.FAILED:
                done.dead_lettered += 1
            elif r["status"] == Status.CANCELLED:
                done.cancelled += 1
            else:
                done.requeued += 1
        # Claimed in Redis but never started in PostgreSQL (QUEUED, RETRYING) go back too.
        latest = {str(r["id"]): r for r in rows}
        latest.update({str(r["id"]): r for r in settled})
        moves = [Move.after(latest[i]) if i in latest else Move.drop(i) for i in ids]
        await queue.move(moves)
        return done

    # cancel: waiting -> CANCELLED at once; running -> flagged, and its worker told
    async def cancel(self, job_id: uuid.UUID, reason: str = "cancelled by request",
                     namespace: str | None = None) -> tuple[str, Row | None]:
        """``("cancelled" | "requested" | "refused", row)``; row None for an unknown id
        (or, with ``namespace``, another namespace's job)."""
        outcome, row = await self.store.cancel(job_id, reason, namespace)
        if row is None or outcome == "refused":
            return outcome, row
        queue = self.queue_of(row["queue"])
        try:
            if outcome == "cancelled":
                await queue.remove([(row["id"], row["job_type"])])
            else:
                await queue.request_cancel(row["id"])
        except REDIS_DOWN as exc:
            # PostgreSQL holds the decision: a stale Redis entry is refused at start, and a
            # running attempt's outcome becomes CANCELLED when it settles (the cancel rule).
            log.warning("cancel recorded in PostgreSQL, Redis not told",
                        extra={"job_id": str(job_id), "job_type": row["job_type"],
                               "error": repr(exc)})
        return outcome, row

    # redrive: FAILED -> QUEUED with a fresh set of attempts
    async def redrive(self, *, job_ids: Sequence[uuid.UUID] | None = None,
                      job_type: str | None = None, namespace: str | None = None
                      ) -> list[Row]:
        return await self._push(await self.store.redrive(job_ids=job_ids, job_type=job_type,
                                                         namespace=namespace))

    async def _push(self, rows: Iterable[Row],
                    by_queue: dict[str, list[Placement]] | None = None) -> list[Row]:
        """Place just-committed QUEUED jobs; where Redis refuses, mark them PENDING so the
        scheduler's sweep pushes them later (the status column is the outbox).
        ``by_queue``: their placements, already built (``enqueue_chunks``)."""
        rows = list(rows)
        if by_queue is None:
            by_queue = {}
            _place(rows, by_queue)
        failed: list[uuid.UUID] = []
        for name, placements in by_queue.items():
            try:
                await self.queue_of(name).push(placements)
            except REDIS_DOWN as exc:
                log.warning("redis push failed, jobs left PENDING for the sweep",
                            extra={"queue": name, "jobs": len(placements), "error": repr(exc)})
                failed.extend(uuid.UUID(str(p.job_id)) for p in placements)
        if not failed:
            return rows
        await self.store.mark_pending(failed, "redis unavailable at enqueue")
        fetched = {r["id"]: r for r in await self.store.get_many(failed)}
        return [fetched.get(r["id"], r) for r in rows]


def _place(rows: Iterable[Row], by_queue: dict[str, list[Placement]]) -> None:
    """Add the placements of the QUEUED jobs among ``rows``, by queue."""
    for r in rows:
        if r["status"] == Status.QUEUED:
            by_queue.setdefault(r["queue"], []).append(Placement.of(r))


def horizon(lookahead_seconds: float) -> datetime:
    """The promotion horizon: jobs due before it go to Redis's delayed set now."""
    return datetime.now(UTC) + timedelta(seconds=lookahead_seconds)
