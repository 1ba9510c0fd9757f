"""The worker pool: claim, start, hand each job to its attempt, and drain on SIGTERM.

One asyncio process runs up to ``concurrency`` jobs at once:

1. **claim** (``_claim_loop``): a Lua script moves up to "free slots" jobs from the ready
   queues to the lease set (priority first, limits honoured, each job's lock taken);
2. **start** (``_start``): ``Lifecycle.begin`` begins the attempts in PostgreSQL
   (``attempts + 1``: the fencing token) and hands back in Redis what no longer waits;
   below 20 slots it returns as soon as the UPDATE has decided which jobs start, with the
   commit in flight (pipelined start: the handlers do not wait for the WAL flush); from 20
   up, once the start has committed;
3. **attempt** (``worker/attempt.py``): each started job runs its handler and commits its
   outcome through the settler (``worker/settler.py``: PostgreSQL first, Redis after),
   once its start's commit has succeeded.

Slots are counted by :class:`Slots`: the claim takes them, the start hands one to each
attempt and gives back the rest in a ``finally``, and an attempt gives its own back
whatever happens. The background loops (heartbeat, cancel listener, lease recovery) live
in ``worker/upkeep.py``. On SIGTERM the pool stops claiming, lets running jobs finish within
the grace period, and hands the rest back without spending an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from datetime import UTC, datetime
from typing import Any, NamedTuple

from shared.connections import Stores
from shared.core.lifecycle import Lifecycle, Outcome
from shared.core.status import Status
from shared.observability import metrics
from shared.observability.logs import get_logger
from shared.queue.presence import Presence
from shared.registry import Registry
from shared.settings import Settings
from shared.store.jobs import JobStore
from worker.attempt import Attempt
from worker.settler import Settler
from worker.upkeep import STORE_ERRORS, background

log = get_logger("worker")

# Redis connections opened before the first claim: the idle wait (BLPOP holds one), the
# claim, the settler's moves, the heartbeat and lease recovery can all be in flight.
REDIS_WARM = 5


class Slots:
    """How many jobs the worker has taken on (claimed, starting or running)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.freed = asyncio.Event()

    @property
    def free(self) -> int:
        return self.total - self.used

    def take(self, n: int) -> None:
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n
        self.freed.set()


class SlotHold:
    """The slots one claim took: each started attempt takes one over, the rest go back."""

    def __init__(self, slots: Slots, n: int) -> None:
        self.slots = slots
        self.left = n
        slots.take(n)

    def hand_over(self) -> None:
        self.left -= 1

    def give_rest(self) -> None:
        if self.left > 0:
            self.slots.give(self.left)
            self.left = 0


class Worker:
    def __init__(self, settings: Settings, registry: Registry,
                 stores: Stores | None = None) -> None:
        self.settings = settings
        self.registry = registry
        # Every connection the worker may use is opened before its first claim and kept
        # (asyncpg would close one idle for 5 minutes, and reopen it in the middle of a
        # burst): opening one costs milliseconds, which a job's pickup would wait for.
        self.stores = stores or Stores(settings, pool_options={
            "min_size": settings.worker_db_connections,
            "max_size": settings.worker_db_connections,
            "max_inactive_connection_lifetime": 0})
        self.queue = self.stores.queue(settings.queue)
        self.types = registry.limits(settings.queue)
        self.limited = {t.job_type for t in self.types if t.concurrency}
        # Who this worker is and what it runs, renewed by every heartbeat; it expires
        # after three missed beats, so a killed worker leaves the console on its own.
        self.presence = Presence(
            self.stores.redis, settings.redis_prefix, worker_id=settings.worker_id,
            queue=settings.queue, concurrency=settings.worker_concurrency,
            job_types=[t.job_type for t in self.types],
            ttl_seconds=3 * settings.heartbeat_interval)
        self.token = self.stores.locks.new_token(settings.worker_id)
        # One Redis node (the default): each job's lock lives beside the queue and is
        # taken, extended and released inside the queue's own scripts, which saves two
        # round trips a batch. Several lock nodes: a separate Redlock over them.
        self.inline_locks = settings.lock_urls == [settings.redis_url]
        self.lock_token = self.token if self.inline_locks else ""
        # Every attempt whose outcome is not yet committed (the heartbeat keeps their leases).
        self.running: dict[str, Attempt] = {}
        self.slots = Slots(settings.worker_concurrency)
        # A claim takes up to every free slot at small concurrency (fewer, larger batches:
        # drain at 10 went from 5.0k to 6.5k jobs/s) but half of them from 20 up, so that
        # one batch's start and settle overlap the next claim (all 100 at once drained at
        # 8.5k jobs/s against 12k for half: bench/RESULTS.md, issue 12, final run).
        concurrency = settings.worker_concurrency
        self._claim_max = min(concurrency, max(10, (concurrency + 1) // 2))
        # Below 20 slots the start is pipelined (the handlers do not wait for its WAL
        # flush: with few slots that wait is most of a job's turn; drain at 10 went from
        # 4.1k to 5.3-6.1k jobs/s). From 20 up enough claims are in flight to cover the
        # flush, and what costs is the CPU of the pipelined start's two more statements
        # (BEGIN, COMMIT), its commit task and each attempt's wait on it: the start
        # commits in its one statement instead, and two settles commit at once, so that
        # the settles keep up with the starts under the bound on unsettled attempts
        # (drain at 100: bench/RESULTS.md, issue 12, "drain at 100").
        self._pipelined = concurrency < 20
        self._settle_commits = 1 if self._pipelined else 2
        # Attempts whose start has not yet committed: at most twice the slots (what may
        # run again if PostgreSQL loses them). Attempts not yet settled: at most three
        # times the slots (unbounded, a drain at 100 peaked at 61-68 MB instead of 53).
        self._undurable = 0
        self._undurable_max = 2 * concurrency
        # Jobs claimed whose start is in flight: they may become undurable attempts, so
        # they count against that bound too (else a slot freed meanwhile let a claim
        # through on top of them: 5 runs at concurrency 2 with every commit stalled).
        self._starting = 0
        self._unsettled_max = 3 * concurrency
        self._starts: set[asyncio.Task[None]] = set()
        self._signal: asyncio.Future[bool] | None = None  # the idle wait's pending BLPOP
        self.resources: dict[str, Any] = {}
        self.ready = False  # connected and claiming (for the readiness probe)
        self.closed = False  # the background loops end
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Begin a graceful shutdown (SIGTERM): stop claiming, then drain."""
        self._stopping.set()

    # --- the main loop -----------------------------------------------------------------------

    async def run(self) -> None:
        self.pool = await self.stores.pool()
        self.lifecycle = Lifecycle(await self.stores.store(), self.stores.queue)
        await self._warm()
        release = None if self.inline_locks else self._release_locks
        self.settler = Settler(self.lifecycle, self.queue, self.lock_token, release,
                               self.settings.settle_batch_max,
                               commits_max=self._settle_commits)
        self.settler.start()
        self._background = background(self)
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

    async def _warm(self) -> None:
        """Before the first claim: every PostgreSQL connection of the pool open, with the
        start and settle statements prepared on each (asyncpg prepares a statement on a
        connection's first use of it: one more round trip, on a job's path); Redis
        connections open for the loops that run side by side (wait, claim, moves,
        heartbeat). Best effort: a store that is not up yet is what the claim loop waits
        for."""
        try:
            conns = await asyncio.gather(*(self.pool.acquire()
                                           for _ in range(self.pool.get_max_size())),
                                         return_exceptions=True)
            try:
                for conn in conns:
                    if not isinstance(conn, BaseException):
                        await JobStore(conn).claim([], self.settings.worker_id)
                        await JobStore(conn).settle([])
            finally:
                for conn in conns:
                    if not isinstance(conn, BaseException):
                        await self.pool.release(conn)
            await asyncio.gather(*(self.stores.redis.ping() for _ in range(REDIS_WARM)))
        except STORE_ERRORS as exc:
            log.warning("could not open every connection before claiming",
                        extra={"error": repr(exc)})

    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            # Up to _claim_max free slots in one claim (see __init__).
            # Bounded by the attempts whose start is not yet durable too: a handler frees
            # its slot when it returns, before its start has committed, so while
            # PostgreSQL is slow or down the worker would otherwise run job after job whose
            # start may never commit (each one runs again later: at least once, but not
            # without bound).
            # And by the attempts not yet settled (running, or waiting for their commits),
            # which bounds the worker's memory when the settles fall behind.
            room = min(self._undurable_max - self._undurable - self._starting,
                       self._unsettled_max - len(self.running))
            free = min(self.slots.free, self._claim_max, room)
            if free <= 0:
                self.slots.freed.clear()
                await self._until_stopping(self.slots.freed.wait())
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
                # Started in the background: the next claim need not wait for this batch's
                # commit in PostgreSQL. The slots are taken here, before the task exists.
                hold = SlotHold(self.slots, len(claimed))
                self._starting += len(claimed)
                task = asyncio.create_task(self._start(claimed, hold))
                self._starts.add(task)
                task.add_done_callback(functools.partial(self._started, hold, len(claimed)))
                # One turn of the loop first: the start sends its UPDATE before the next
                # claim is sent, rather than after (0.09 ms at the median on a job's path:
                # bench/RESULTS.md, issue 12, round four).
                await asyncio.sleep(0)
                continue
            idle = self.settings.idle_poll_seconds
            # +1 ms: Redis gives whole milliseconds; waking before the due time only to
            # find nothing due would claim again at once.
            timeout = idle if wake_in is None else min(wake_in + 0.001, idle)
            with contextlib.suppress(*STORE_ERRORS):
                await self._idle(timeout)

    async def _idle(self, seconds: float) -> None:
        """Wait until a push signals new work, ``seconds`` pass, or a shutdown begins.

        The timer is ours, not BLPOP's: Redis looks at a blocked client's timeout only at
        its own tick (``hz``: every 100 ms by default), so ``BLPOP`` with a 5 ms timeout
        returns after up to 100 ms, and a job due in 5 ms would start that late. The
        BLPOP itself (with the idle poll's timeout) stays pending when our timer fires
        first and serves the next wait: cancelling it would cost its connection."""
        if seconds <= 0:
            return
        signal = self._signal
        if signal is None or signal.done():
            signal = self._signal = asyncio.ensure_future(
                self.queue.wait_for_work(self.settings.idle_poll_seconds))
        stopper: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({signal, stopper}, timeout=seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            await asyncio.gather(stopper, return_exceptions=True)
        if signal.done():
            self._signal = None
            if not signal.cancelled() and (exc := signal.exception()) is not None:
                raise exc

    async def _start(self, claimed: list[tuple[str, str, int]], hold: SlotHold) -> None:
        """Lock (unless the claim script did) and start the attempts; each started job's
        attempt takes over one of the claim's slots (the rest: ``_started``)."""
        fresh = [c for c in claimed if c[0] not in self.running]
        if not fresh:
            return
        busy: dict[str, float] = {}
        try:
            if not self.inline_locks:
                _, busy = await self.stores.locks.acquire(
                    [c[0] for c in fresh], self.token, self.settings.lease_seconds)
            starting = await self.lifecycle.begin(self.queue, fresh, self.settings.worker_id,
                                                  busy=busy, lock_token=self.lock_token,
                                                  pipelined=self._pipelined)
        except STORE_ERRORS as exc:
            # The jobs stay in our lease set; if we cannot reach the stores they come back
            # to the queue when the lease expires.
            log.warning("could not start claimed jobs", extra={"error": str(exc)})
            await self._until_stopping(asyncio.sleep(1.0))
            return
        # Pipelined start: the handlers run while the start's commit is in flight; each
        # attempt's settle waits for it (``Attempt.start_durable``). Not pipelined: the
        # start is durable already (``committed`` is None).
        attempts = []
        for row in starting.rows:
            hold.hand_over()
            attempt = Attempt(self, row, self.registry.get(row["job_type"]), starting.committed)
            attempt.launch()
            attempts.append(attempt)
        if attempts and starting.committed is not None:
            self._undurable += len(attempts)
            starting.committed.add_done_callback(functools.partial(_start_ended, attempts))
            starting.committed.add_done_callback(
                functools.partial(self._start_durable_or_lost, len(attempts)))

    def _started(self, hold: SlotHold, claimed: int, task: asyncio.Task[None]) -> None:
        """Done-callback of a start: give back every slot no attempt took over, however
        the start ended (even cancelled before its first step); its started attempts
        count as undurable now (``_start``), not as starting."""
        self._starts.discard(task)
        self._starting -= claimed
        hold.give_rest()
        self.slots.freed.set()  # the claim loop may go on

    def _start_durable_or_lost(self, n: int, _: asyncio.Task[None]) -> None:
        """Done-callback of a pipelined start's commit, however it ended: its attempts no
        longer count against the bound on undurable starts."""
        self._undurable -= n
        self.slots.freed.set()  # the claim loop may go on

    # --- what attempts call back -----------------------------------------------------------

    def cancel(self, job_id: str) -> None:
        """Stop a running job at its next await; it settles as CANCELLED."""
        att = self.running.get(job_id)
        if att is not None:
            att.interrupt("cancel")

    def forget(self, att: Attempt) -> None:
        if self.running.get(att.job_id) is att:
            del self.running[att.job_id]
            self.slots.freed.set()  # room under _unsettled_max: the claim loop may go on

    def count_duration(self, job_type: str, seconds: float) -> None:
        _metrics_of(job_type).duration.observe(seconds)

    def count_wait(self, job_type: str, due: datetime | None) -> None:
        """Time from due to start, for first attempts. A naive ``due`` is PostgreSQL's
        ±infinity as asyncpg decodes it: nothing to measure."""
        if due is not None and due.tzinfo is not None:
            wait = max((datetime.now(UTC) - due).total_seconds(), 0.0)
            _metrics_of(job_type).wait.observe(wait)

    def count_outcome(self, att: Attempt, outcome: Outcome, status: str | None) -> None:
        """Counted from what PostgreSQL holds (``status``), after the commit."""
        if status is None:
            log.warning("outcome fenced out: a newer attempt owns the job",
                        extra={"job_id": att.job_id, "job_type": att.job_type,
                               "attempt": att.number})
            return
        counted = _metrics_of(att.job_type)
        ended = counted.ended.get(Status(status))
        if ended is not None:
            ended.inc()
        if status == Status.RETRYING:
            counted.retries.inc()
        elif status == Status.FAILED:
            counted.failed.inc()
            log.warning("job dead-lettered", extra={"job_id": att.job_id,
                                                    "job_type": att.job_type,
                                                    "attempt": att.number,
                                                    "error": outcome.error})

    async def _release_locks(self, job_ids: list[str]) -> None:
        await self.stores.locks.release(job_ids, self.token)

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
        if self._signal is not None:  # the idle wait's BLPOP: no longer wanted
            self._signal.cancel()
            await asyncio.gather(self._signal, return_exceptions=True)
            self._signal = None
        if self._starts:  # claims whose start is in flight join the running jobs first
            await asyncio.wait(self._starts, timeout=grace)
        tasks = [a.task for a in self.running.values() if a.task is not None]
        if tasks:
            log.info("draining", extra={"running": len(tasks), "grace_seconds": grace})
            await asyncio.wait(tasks, timeout=grace)
        leftovers = [a for a in self.running.values() if a.task and not a.task.done()]
        for att in leftovers:  # handed back, attempt not spent (Outcome.released)
            att.interrupt("release")
        if leftovers:
            await asyncio.wait([a.task for a in leftovers if a.task is not None], timeout=10.0)
        await self.settler.stop()
        self.closed = True
        for t in self._background:
            t.cancel()
        _, stuck = await asyncio.wait(self._background, timeout=5.0)
        if stuck:
            log.warning("background tasks did not stop", extra={
                "tasks": sorted(t.get_name() for t in stuck)})
        with contextlib.suppress(*STORE_ERRORS):
            await self.presence.leave()
        await self.stores.close()
        log.info("worker stopped", extra={"released": len(leftovers)})


def _start_ended(attempts: list[Attempt], committed: asyncio.Task[None]) -> None:
    """Done-callback of a pipelined start's commit: if it failed (PostgreSQL went away
    mid-commit: it may or may not hold the start), the attempts stop and write nothing;
    their jobs stay in our lease set until it expires, and lease recovery places them
    from what PostgreSQL holds (run again: at least once)."""
    error = None if committed.cancelled() else committed.exception()
    if error is None and not committed.cancelled():
        return
    log.warning("start of attempts not committed, abandoning them",
                extra={"jobs": [a.job_id for a in attempts], "error": repr(error)})
    for attempt in attempts:
        attempt.interrupt("lost")


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
