"""The worker-wide memory budget of image_processing, and handing memory back afterwards.

A compressed image says nothing about what decoding it costs: a 150 KiB PNG of 6300x6300
decodes to 160 MB, and eight of them at once took a 1 GiB worker to 3 GiB. So every job
estimates its decoded size from the image header before it decodes anything and waits
for that share of ``AJS_IMAGE_MEMORY_BUDGET_BYTES``; all jobs of a worker share one
budget (in ``JobContext.resources``). Waiters are served first come, first served, so a
large image is not starved by a stream of small ones.

glibc keeps freed memory in its arenas (one per thread, and handlers run in threads), so
after a large image the worker's RSS would stay high; ``malloc_trim(0)`` gives the free
pages back to the system.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
from collections import deque
from typing import Any

RESOURCE = "image.budget"


class MemoryBudget:
    """A weighted, first-come-first-served semaphore over bytes, for one event loop."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, amount: int) -> int:
        """Wait until ``amount`` bytes are free and take them; returns ``amount``.
        Cancelled while waiting, it takes nothing (also if granted in that same instant)."""
        if amount > self.total:
            raise ValueError(f"{amount} bytes exceed the whole budget of {self.total}")
        if not self._waiters and self.used + amount <= self.total:
            self.used += amount
            return amount
        waiter = (amount, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await waiter[1]
        except asyncio.CancelledError:
            if waiter[1].done() and not waiter[1].cancelled():
                self.release(amount)  # granted, but the caller will never know: give back
            else:
                if waiter in self._waiters:  # _wake may have dropped it already
                    self._waiters.remove(waiter)
                self._wake()  # the head may have left: the next ones may fit now
            raise
        return amount

    def release(self, amount: int) -> None:
        if amount:
            self.used -= amount
            self._wake()

    def release_when_done(self, amount: int, work: asyncio.Future[Any]) -> None:
        """Give ``amount`` back when ``work`` (a thread that cannot be stopped) ends."""
        work.add_done_callback(functools.partial(self._release_done, amount))

    def _release_done(self, amount: int, _: asyncio.Future[Any]) -> None:
        self.release(amount)

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.total:
            amount, future = self._waiters.popleft()
            if not future.done():
                self.used += amount
                future.set_result(None)


def of(resources: dict[str, Any], total: int) -> MemoryBudget:
    """The worker's budget (made on first use; handlers run on the worker's one loop)."""
    budget = resources.get(RESOURCE)
    if not isinstance(budget, MemoryBudget):
        budget = resources[RESOURCE] = MemoryBudget(total)
    return budget


@functools.cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return getattr(libc, "malloc_trim", None)
    except OSError:
        return None


def give_back_memory() -> None:
    """Return freed heap pages to the system where the C library can (glibc); elsewhere
    (musl, macOS) nothing to do."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
