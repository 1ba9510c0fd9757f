"""One attempt of one job, from start to committed outcome.

An :class:`Attempt` owns what the attempt holds: one of the worker's slots, its place in
the worker's running set (which the heartbeat reads to keep the job's lease and lock), and
its outcome. Whatever happens (the handler raises, times out or is cancelled; our own code
fails outside the handler; the task is cancelled before its first step), the slot comes
back, the attempt leaves the running set, and an outcome is written unless a newer attempt
owns the job:

1. ``run``: parse the payload and call the handler under the job's timeout. Every way out
   is an :class:`~shared.core.lifecycle.Outcome`; an exception in our own code is a
   failure like any other (retried, or dead-lettered by the rule), never a job left
   PROCESSING.
2. the slot is freed as soon as the handler returns, so the worker can take the next job
   while the outcome commits;
3. once the start's commit (in flight while the handler ran: pipelined start) has
   succeeded, the outcome joins the settler's group commit (PostgreSQL); its Redis move
   follows separately. A start that did not commit writes nothing (see
   ``start_durable``);
4. ``_finished``, the task's done-callback, runs even if the task never started: it frees
   the slot if still held and, if no outcome was handed over, hands one over.

Cancellation is a request (``interrupt``): it cancels the task only while the handler runs.
An attempt interrupted before its handler starts sees the request and ends without running
it, so a cancel can never land on a coroutine that has not yet entered its ``try``.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError

from shared.core.backoff import retry_delay
from shared.core.lifecycle import Outcome
from shared.observability.logs import JobLog, get_logger
from shared.registry import JobContext, JobType, PermanentError, RetryableError

if TYPE_CHECKING:
    from shared.store.jobs import Row
    from worker.pool import Worker

log = get_logger("worker")

Stop = Literal["cancel", "release", "lost"]


class Attempt:
    def __init__(self, worker: Worker, row: Row, handler: JobType | None,
                 committed: asyncio.Future[None] | None = None) -> None:
        self.worker = worker
        self.committed = committed  # the start's commit, in flight (pipelined start)
        self.row = row
        self.job_id = str(row["id"])
        self.job_type: str = row["job_type"]
        self.number: int = row["attempts"]  # the attempt number: also the fencing token
        self.started_at = datetime.now(UTC)  # for the worker's presence record
        self.handler = handler
        self.stop: Stop | None = None  # why the attempt was asked to end early
        self.task: asyncio.Task[None] | None = None
        self._in_handler = False
        self._holds_slot = True  # taken by the claim on the attempt's behalf
        self._handed_over = False  # the outcome (or "none: lost") went to the settler

    # --- what the worker calls ------------------------------------------------------------

    def launch(self) -> None:
        self.worker.running[self.job_id] = self
        self.task = asyncio.create_task(self._life(), name=f"job-{self.job_id}")
        self.task.add_done_callback(self._finished)

    def interrupt(self, why: Stop) -> None:
        """Ask the attempt to end early: cancel its handler if it is running one."""
        if self.stop is not None:
            return
        self.stop = why
        if self._in_handler and self.task is not None and not self.task.done():
            self.task.cancel()

    # --- the life of the attempt ------------------------------------------------------------

    async def _life(self) -> None:
        started = time.perf_counter()
        outcome = await self.run()
        self._free_slot()
        if outcome is not None and not await self.start_durable():
            outcome = None
        self._handed_over = True  # submit() queues the outcome before its first await
        if outcome is None:  # lock lost (a newer attempt owns the job), or start not durable
            return
        self.worker.count_duration(self.job_type, time.perf_counter() - started)
        status = await self.worker.settler.submit(outcome)
        self.worker.count_outcome(self, outcome, status)

    async def start_durable(self) -> bool:
        """Wait until PostgreSQL holds this attempt's start (its fencing token): nothing
        is written under the token before. False if the start's commit failed: the
        outcome is dropped, and lease recovery decides from what PostgreSQL holds."""
        if self.committed is None:
            return True
        try:
            # Shielded: the commit is shared by the attempts of one claim.
            await asyncio.shield(self.committed)
        except asyncio.CancelledError:
            if self.committed.cancelled():
                return False
            raise
        except Exception:
            return False  # logged once by the worker (``_start_ended``)
        return True

    async def run(self) -> Outcome | None:
        """The handler's outcome, whatever happens but the event loop going away."""
        try:
            return await self._execute()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.stop is None:
                raise  # not ours: the loop is shutting down
            if task is not None:
                task.uncancel()
            return self._stopped()
        except Exception as exc:  # our own code, outside the handler's guard
            log.exception("attempt failed outside its handler",
                          extra={"job_id": self.job_id, "job_type": self.job_type,
                                 "attempt": self.number})
            return self.failure(f"worker error: {type(exc).__name__}: {exc}")

    async def _execute(self) -> Outcome | None:
        row, jt = self.row, self.handler
        if self.stop is not None:
            return self._stopped()
        if row["cancel_requested"]:
            return Outcome.cancelled(row["id"], self.number, "cancelled before start")
        if jt is None:
            return self.failure(f"no handler for job type {self.job_type!r}", permanent=True)
        try:
            payload = jt.parse(row["payload"], self.worker.settings)
        except ValidationError as exc:
            return self.failure(f"payload no longer valid: {exc}", permanent=True)
        if self.number == 1:
            self.worker.count_wait(self.job_type, row["scheduled_at"] or row["created_at"])
        jlog = JobLog(log, self.job_id, self.job_type, self.number)
        ctx = JobContext(self.job_id, self.job_type, self.number, row["max_retries"],
                         row["timeout_seconds"], self.worker.settings, self.worker.pool,
                         self.worker.stores.redis, jlog, self.worker.resources)
        self._in_handler = True
        try:
            async with asyncio.timeout(row["timeout_seconds"]):
                result = await jt.handler(payload, ctx)
        except TimeoutError:
            return self.failure(f"timed out after {row['timeout_seconds']:g} s")
        except PermanentError as exc:
            return self.failure(f"{type(exc).__name__}: {exc}", permanent=True)
        except RetryableError as exc:
            return self.failure(f"{type(exc).__name__}: {exc}", retry_after=exc.retry_after)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a handler bug or a transient fault: retry with backoff
            jlog.warning("attempt failed", extra={"error": repr(exc)})
            return self.failure(f"{type(exc).__name__}: {exc}")
        finally:
            self._in_handler = False
        if self._asked("cancel"):
            # The handler finished (ignoring or never reaching an await) after a cancel:
            # the cancel rule in the settle statement makes it CANCELLED, result kept.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.uncancel()
        return Outcome.completed(row["id"], self.number, jsonable(result))

    def _asked(self, why: Stop) -> bool:
        # A method, not an inline test: ``stop`` changes while we await (mypy cannot know).
        return self.stop == why

    def _stopped(self) -> Outcome | None:
        job_id = self.row["id"]
        if self.stop == "cancel":
            return Outcome.cancelled(job_id, self.number, "cancelled while running")
        if self.stop == "release":
            return Outcome.released(job_id, self.number)
        return None  # "lost"

    def failure(self, error: str, *, permanent: bool = False,
                retry_after: float | None = None) -> Outcome:
        """The dead-letter rule (``Outcome.after_failure``) with this job's backoff."""
        delay = retry_after
        if delay is None:
            backoff = self.handler.backoff if self.handler else None
            delay = (retry_delay(self.number, self.worker.settings, backoff) if backoff
                     else retry_delay(self.number, self.worker.settings))
        return Outcome.after_failure(
            self.row["id"], self.number, self.row["max_retries"], error, permanent=permanent,
            retry_at=datetime.now(UTC) + timedelta(seconds=delay))

    # --- giving everything back ------------------------------------------------------------------

    def _free_slot(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            self.worker.slots.give(1)

    def _finished(self, task: asyncio.Task[None]) -> None:
        """Done-callback: runs however the task ended, even cancelled before its first step."""
        self._free_slot()
        if self._handed_over:  # the outcome is committed (or there was none to write)
            self.worker.forget(self)
            return
        # The task ended without an outcome: cancelled from outside (the event loop is
        # closing) or failed in our own code. Hand one over if anyone can still write it;
        # otherwise the lease expires and lease recovery settles the job.
        self._handed_over = True
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("attempt task failed", exc_info=error,
                      extra={"job_id": self.job_id, "attempt": self.number})
        fallback = self._stopped() if self.stop else self.failure(
            f"worker error: the attempt ended without an outcome ({error!r})")
        if fallback is not None and self.worker.settler.running:
            self.worker.settler.submit_nowait(fallback, lambda: self.worker.forget(self))
        else:
            self.worker.forget(self)


def jsonable(result: Any) -> Any:
    """Handler results are stored as jsonb: coerce what json cannot take, drop NULs."""
    if result is None:
        return None
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json")
    text = json.dumps(result, default=str)
    if "\\u0000" in text:
        text = text.replace("\\u0000", "")
    return json.loads(text)
