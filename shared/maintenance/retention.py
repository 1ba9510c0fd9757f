"""Retention: finished jobs, and their history, are deleted after a per-status age.

Ages come from the ``AJS_RETENTION_*`` settings, overridden per job type
(``@job_type(..., retention={"COMPLETED": 3600})``); 0 keeps for ever. Deletes go in
bounded batches, each one short statement (SKIP LOCKED, oldest first, by the
``jobs_finished`` index), and after each one the pass pauses so that it spends at most
``AJS_RETENTION_MAX_SHARE`` of its time deleting: flat out, deleting a backlog took most of
a core and the WAL with it, and enqueue's p99 more than doubled (``bench/RESULTS.md``,
"Millions of rows"). A tick deletes at most ``AJS_RETENTION_MAX_PER_TICK`` jobs in at most
``AJS_RETENTION_MAX_SECONDS``; a backlog drains over several ticks. A job with an
idempotency key is kept until its key's window (``AJS_IDEMPOTENCY_WINDOW_SECONDS``) has
passed, so a retried create still finds its original job.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from shared.core.status import Status
from shared.registry import Registry
from shared.settings import Settings
from shared.store.jobs import JobStore

FINISHED = (Status.COMPLETED, Status.CANCELLED, Status.FAILED)


@dataclass
class Deleted:
    by_status: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


def ages(settings: Settings) -> dict[Status, float]:
    return {Status.COMPLETED: settings.retention_completed_seconds,
            Status.CANCELLED: settings.retention_cancelled_seconds,
            Status.FAILED: settings.retention_failed_seconds}


async def delete_expired(store: JobStore, settings: Settings, registry: Registry,
                         now: datetime | None = None) -> Deleted:
    now = now or datetime.now(UTC)
    keyed_after = now - timedelta(seconds=settings.idempotency_window_seconds)
    budget = settings.retention_max_per_tick
    stop_at = time.monotonic() + settings.retention_max_seconds
    rest = 1 / settings.retention_max_share - 1  # seconds of pause per second of deleting
    done = Deleted()
    for status, default in ages(settings).items():
        special = {jt.name: jt.retention[status.value] for jt in registry.all()
                   if jt.retention and status.value in jt.retention}
        # (age, only this type, or every type but the special ones)
        plans: list[tuple[float, str | None, list[str]]] = [(default, None, list(special))]
        plans += [(age, name, []) for name, age in special.items()]
        for age, only, others in plans:
            if age <= 0:
                continue
            before = now - timedelta(seconds=age)
            while budget > 0 and time.monotonic() < stop_at:
                started = time.monotonic()
                n = await store.delete_finished(
                    status, before, job_type=only, except_types=others,
                    keyed_after=keyed_after, limit=min(settings.retention_batch_size, budget))
                budget -= n
                done.by_status[status.value] = done.by_status.get(status.value, 0) + n
                if n < settings.retention_batch_size:
                    break
                await asyncio.sleep(min((time.monotonic() - started) * rest,
                                        max(stop_at - time.monotonic(), 0.0)))
    return done
