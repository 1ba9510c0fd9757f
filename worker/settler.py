"""Group commit for the end of attempts.

Finished attempts wait here briefly and are written together: one fenced UPDATE in
PostgreSQL, one Redis script to move them out of the lease set, one lock release. While
one batch is being written the next one gathers, so at high throughput the cost per job
falls, and at low throughput a lone job is written at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from shared.store.jobs import Outcome


@dataclass(slots=True)
class Pending:
    outcome: Outcome
    done: asyncio.Future[bool]


Flush = Callable[[list[Outcome]], Awaitable[set[str]]]


class Settler:
    def __init__(self, flush: Flush, batch_max: int, retry_delay: float = 0.5) -> None:
        self._flush = flush
        self._batch_max = batch_max
        self._retry_delay = retry_delay
        self._items: list[Pending] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="settler")

    async def submit(self, outcome: Outcome) -> bool:
        """Queue one outcome and wait until it is written. False: a newer attempt owns the
        job (we were fenced out), so nothing was written for this one."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._items.append(Pending(outcome, done))
        self._wake.set()
        return await done

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._items:
                batch, self._items = (self._items[: self._batch_max],
                                      self._items[self._batch_max:])
                await self._write(batch)
            if self._closing:
                return

    async def _write(self, batch: list[Pending]) -> None:
        delay = self._retry_delay
        while True:
            try:
                written = await self._flush([p.outcome for p in batch])
                break
            except asyncio.CancelledError:
                raise
            except Exception:  # the store is down: keep the outcomes, try again
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        for p in batch:
            if not p.done.done():
                p.done.set_result(str(p.outcome.job_id) in written)

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
