"""Group commit for single creates: concurrent one-job creates share one INSERT and one push.

Under load an API process receives many ``POST /jobs`` at once, and each one alone costs a
pool checkout, an INSERT round trip, a commit (a WAL flush with synchronous_commit on) and
a Redis push. The coalescer queues the jobs of concurrent single creates and hands them to
``Lifecycle.enqueue`` together: one statement, one commit, one push per queue. When the
server is idle a create goes out on the next turn of the event loop, alone, so nothing
waits for company; only while ``max_in_flight`` flushes are already running do new jobs
wait, and then they leave together as soon as one finishes. The batch grows with the load,
which is what keeps the latency flat as the rate rises.

What each caller still gets:

- its own row, and only once the commit that holds its job is done (and the push tried:
  ``Lifecycle.enqueue`` marks jobs PENDING where Redis refused, as for any create);
- its own error: when PostgreSQL refuses a shared statement for a row it holds (a bad
  value, a constraint: nothing of it committed), every job of it is retried alone, so one
  bad job fails one request. Any other failure (a lost connection, a server shutting down
  mid-statement) fails the whole flush without a retry: the commit may have happened, and
  a retry could make a second job the client never asked for (a single create answers a
  500 in that case too);
- cancellation: a caller that gives up before its flush starts takes its job out; once
  the flush started, the job is committed as if the caller had waited (as a single create
  whose client hangs up mid-INSERT).

Idempotency keys and batches do not come here: they keep their own all-or-nothing insert.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from shared.store.jobs import NewJob, Row

Enqueue = Callable[[Sequence[NewJob]], Awaitable[list[Row]]]

# Errors about the rows themselves (bad value, constraint, size limit): the statement was
# refused before anything committed. Any other failure (connection lost, the server shut
# down mid-statement, cancelled) may have come after the commit, so it is not retried.
REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
           asyncpg.ProgramLimitExceededError)

MAX_BATCH = 200  # jobs per statement: bounds one flush's time and the event loop's work
MAX_IN_FLIGHT = 2  # flushes at once; more waiting jobs join the next one


class EnqueueCoalescer:
    """One per process (per ``JobService``); safe on any running event loop."""

    def __init__(self, enqueue: Enqueue, *, max_batch: int = MAX_BATCH,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._enqueue = enqueue
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._waiting: list[tuple[NewJob, asyncio.Future[Row]]] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()  # strong references until done
        self._loop: asyncio.AbstractEventLoop | None = None

    async def enqueue(self, job: NewJob) -> Row:
        """Commit and push ``job`` (possibly with others); its row once committed."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._adopt(loop)
        done: asyncio.Future[Row] = loop.create_future()
        self._waiting.append((job, done))
        self._kick(loop)
        return await done

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start afresh on another event loop. A loop dropped without running its callbacks
        (a caller's own ``run_until_complete``, a test's loop) would otherwise leave a
        flush marked scheduled or in flight forever, and every later create waiting."""
        self._loop = loop
        self._waiting = [w for w in self._waiting if w[1].get_loop() is loop]
        self._in_flight = 0
        self._scheduled = False
        self._tasks = set()

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        # call_soon, not a flush now: the other requests read in this turn of the loop
        # reach here before it runs, and leave with this job.
        if self._waiting and not self._scheduled and self._in_flight < self._max_in_flight:
            self._scheduled = True
            loop.call_soon(self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        while self._waiting and self._in_flight < self._max_in_flight:
            batch = [w for w in self._waiting[:self._max_batch] if not w[1].done()]
            del self._waiting[:self._max_batch]
            if not batch:
                continue
            self._in_flight += 1
            task = loop.create_task(self._settle(batch))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._flushed, loop, batch))

    def _flushed(self, loop: asyncio.AbstractEventLoop,
                 batch: list[tuple[NewJob, asyncio.Future[Row]]],
                 task: asyncio.Task[None]) -> None:
        """Done-callback of a flush, however it ended: also when it was cancelled before
        its first step, which no ``finally`` inside it would see. Its callers are answered
        (cancelled, if nothing answered them) and its place in flight is given back."""
        self._tasks.discard(task)
        for _, done in batch:
            _fail(done, asyncio.CancelledError())
        if loop is self._loop:  # else _adopt has already started afresh elsewhere
            self._in_flight -= 1
            self._kick(loop)

    async def _settle(self, batch: list[tuple[NewJob, asyncio.Future[Row]]]) -> None:
        try:
            rows = await self._enqueue([job for job, _ in batch])
        except REFUSED as exc:
            # The server refused the statement for what it holds: nothing of it is
            # committed. Alone, only the job(s) that caused it fail.
            if len(batch) == 1:
                _fail(batch[0][1], exc)
                return
            await asyncio.gather(*(self._settle([one]) for one in batch))
            return
        except GeneratorExit:  # the coroutine is closed with its loop: nobody to answer
            raise
        except BaseException as exc:  # connection lost, cancelled: unknown, fail them all
            for _, done in batch:
                _fail(done, exc)
            if not isinstance(exc, Exception):
                raise
            return
        if len(rows) != len(batch):  # only idempotency keys skip rows, and none come here
            error = RuntimeError(f"insert returned {len(rows)} rows for {len(batch)} jobs")
            for _, done in batch:
                _fail(done, error)
            return
        for (_, done), row in zip(batch, rows, strict=True):
            if not done.done():
                done.set_result(row)


def _fail(done: asyncio.Future[Row], exc: BaseException) -> None:
    if done.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        done.cancel()
    else:
        done.set_exception(exc)
