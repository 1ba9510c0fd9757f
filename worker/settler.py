"""Group commit for the ends of attempts: PostgreSQL first, Redis after, separately.

Finished attempts wait here briefly and are committed together, one fenced UPDATE for the
batch (``Lifecycle.settle``). An outcome's waiter is answered as soon as PostgreSQL holds
it, whatever Redis is doing: the Redis moves that follow (out of the lease set, into the
delayed set for a retry, the lock released) go to a second loop that retries them on its
own. If the worker dies before a move is made, nothing is lost: PostgreSQL already holds
the outcome, the job's lease expires, and lease recovery places it where its state says.

While one batch is being written the next one gathers, so at high throughput the cost per
job falls, and at low throughput a lone job is written at once. A worker of 20 slots or
more lets two batches commit at once (``commits_max``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from shared.core.lifecycle import REDIS_DOWN, Lifecycle, Move, Outcome, Settled
from shared.core.status import Status
from shared.observability.logs import get_logger
from shared.queue.redis_queue import RedisQueue

log = get_logger("worker")

MOVES_KEPT = 100_000  # a Redis outage longer than this many outcomes: reconcile repairs


@dataclass(slots=True)
class Pending:
    outcome: Outcome
    done: asyncio.Future[str | None] | None = None
    then: Callable[[], None] | None = None  # for outcomes handed over without a waiter


@dataclass
class Settler:
    lifecycle: Lifecycle
    queue: RedisQueue
    lock_token: str = ""  # the lock is released inside move.lua (single Redis node)
    release_locks: Callable[[list[str]], Awaitable[None]] | None = None  # or by Redlock
    batch_max: int = 500
    # Commits in flight at once, each on its own connection. One: while a batch commits
    # the next gathers. Two (the worker's choice from concurrency 20 up): a batch need not
    # wait for the previous one's WAL flush, so the settles keep up with the starts; the
    # batches hold distinct jobs (a job has one attempt at a time in a worker), so their
    # order does not matter, and PostgreSQL flushes the two commits together.
    commits_max: int = 1
    retry_delay: float = 0.5
    _items: list[Pending] = field(default_factory=list)
    _moves: list[Move] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _moves_wake: asyncio.Event = field(default_factory=asyncio.Event)
    _closing: bool = False
    _commit_done: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not self._closing

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._commit_loop(), name="settler-commit"),
                       asyncio.create_task(self._place_loop(), name="settler-place")]

    async def submit(self, outcome: Outcome) -> str | None:
        """Queue one outcome and wait until PostgreSQL holds it. Returns the status it was
        written with (the cancel rule may have changed it), or None when a newer attempt
        owns the job (fenced out: nothing was written)."""
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._items.append(Pending(outcome, done))
        self._wake.set()
        return await done

    def submit_nowait(self, outcome: Outcome, then: Callable[[], None]) -> None:
        """Queue an outcome from a place that cannot await; ``then`` runs once it is
        committed (or fenced out)."""
        self._items.append(Pending(outcome, then=then))
        self._wake.set()

    async def stop(self, within: float = 10.0) -> None:
        """Commit what is queued, try the pending moves once more, then stop."""
        self._closing = True
        self._wake.set()
        self._moves_wake.set()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=within)
            for task in stuck:  # a store that stays down: the leases expire, recovery acts
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*stuck, return_exceptions=True)
            if stuck:
                log.warning("settler stopped with work left", extra={
                    "outcomes": len(self._items), "moves": len(self._moves)})

    # --- PostgreSQL ------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        flying: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._items:
                    if len(flying) >= self.commits_max:
                        await asyncio.wait(flying, return_when=asyncio.FIRST_COMPLETED)
                    for task in [t for t in flying if t.done()]:
                        flying.discard(task)
                        task.result()  # a bug of ours ends the loop, as it always did
                    if len(flying) >= self.commits_max:
                        continue
                    batch, self._items = (self._items[: self.batch_max],
                                          self._items[self.batch_max:])
                    if self.commits_max == 1:  # inline, as cheap as it always was
                        await self._commit_then_move(batch)
                    else:
                        flying.add(asyncio.create_task(self._commit_then_move(batch)))
                if self._closing:
                    if flying:
                        await asyncio.wait(flying)
                    if self._items:  # handed over while the last commits ran
                        self._wake.set()
                        continue
                    self._commit_done = True
                    self._moves_wake.set()
                    return
        finally:
            for task in flying:  # cancelled (a stop that timed out): so are our commits
                task.cancel()
            await asyncio.gather(*flying, return_exceptions=True)

    async def _commit_then_move(self, batch: list[Pending]) -> None:
        settled = await self._commit(batch)
        self._moves.extend(settled.moves)
        self._moves_wake.set()

    async def _commit(self, batch: list[Pending]) -> Settled:
        outcomes = [p.outcome for p in batch]
        delay = self.retry_delay
        retried = False
        while True:
            try:
                settled = await self.lifecycle.settle(outcomes)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL is down: keep the outcomes, try again
                log.warning("outcomes not committed, retrying", extra={"error": repr(exc),
                                                                        "outcomes": len(batch)})
                retried = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        statuses = {str(r["id"]): str(r["status"]) for r in settled.rows}
        if retried:  # an earlier try may have committed before its connection broke
            statuses.update(await self._already_written(outcomes, statuses))
        for p in batch:
            status = statuses.get(str(p.outcome.job_id))
            if p.done is not None and not p.done.done():
                p.done.set_result(status)
            if p.then is not None:
                p.then()
        return settled

    async def _already_written(self, outcomes: list[Outcome], statuses: dict[str, str]
                               ) -> dict[str, str]:
        missing = [o for o in outcomes if str(o.job_id) not in statuses]
        if not missing:
            return {}
        rows = {str(r["id"]): r for r in await self.lifecycle.store.get_many(
            [uuid.UUID(str(o.job_id)) for o in missing])}
        found: dict[str, str] = {}
        for o in missing:
            r = rows.get(str(o.job_id))
            number = o.attempt - 1 if o.refund else o.attempt
            if r is not None and r["attempts"] == number and r["status"] != Status.PROCESSING:
                found[str(o.job_id)] = str(r["status"])
        return found

    # --- Redis, on its own -------------------------------------------------------------------

    async def _place_loop(self) -> None:
        delay = self.retry_delay
        while True:
            await self._moves_wake.wait()
            self._moves_wake.clear()
            while self._moves:
                moves, self._moves = self._moves[: self.batch_max], self._moves[self.batch_max:]
                try:
                    await self.lifecycle.place(self.queue, moves, self.lock_token)
                    if self.release_locks is not None:
                        await self.release_locks([m.job_id for m in moves])
                    delay = self.retry_delay
                except REDIS_DOWN as exc:
                    self._moves = (moves + self._moves)[-MOVES_KEPT:]
                    log.warning("redis moves after commit failed, retrying",
                                extra={"error": repr(exc), "moves": len(self._moves)})
                    if self._closing:
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
            if self._closing and self._commit_done:
                return
