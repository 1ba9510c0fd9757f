"""Maintenance passes that keep Redis in line with PostgreSQL.

Shared by the scheduler function (every tick: all of them) and the workers (lease
recovery, every few seconds, so a dead worker's jobs come back quickly). Each pass is
idempotent and safe to run concurrently with itself.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from shared.core.status import Status
from shared.queue.redis_queue import Placement, RedisQueue, ready_score
from shared.store.jobs import JobStore


@dataclass
class Summary:
    promoted: int = 0
    recovered: int = 0
    dead_lettered: int = 0
    cancelled: int = 0
    requeued: int = 0
    reconciled_ready: int = 0
    reconciled_delayed: int = 0
    leases_restored: int = 0
    depth: dict[str, object] = field(default_factory=dict)

    def add(self, other: Summary) -> None:
        for name in ("promoted", "recovered", "dead_lettered", "cancelled", "requeued",
                     "reconciled_ready", "reconciled_delayed", "leases_restored"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


async def promote_due(store: JobStore, queues: dict[str, RedisQueue], lookahead: float,
                      batch: int = 1000) -> int:
    """PENDING jobs due before the next tick (plus margin) go to Redis's delayed set, so
    workers start them on time; PENDING jobs whose push failed go to their ready queue."""
    horizon = datetime.now(UTC) + timedelta(seconds=lookahead)
    total = 0
    while True:
        rows = await store.promote_due(horizon, batch)
        by_queue: dict[str, list[Placement]] = {}
        for r in rows:
            by_queue.setdefault(r["queue"], []).append(Placement.of(r))
        for name, placements in by_queue.items():
            await queues[name].push(placements)
        total += len(rows)
        if len(rows) < batch:
            return total


async def recover_expired(store: JobStore, queue: RedisQueue, limit: int = 1000) -> Summary:
    """Jobs whose lease expired: back to ready, or to the dead letter queue when their
    attempts are spent, or cancelled when a cancel was pending."""
    summary = Summary()
    ids = await queue.reap(limit)
    if not ids:
        return summary
    rows = await store.recover([uuid.UUID(i) for i in ids])
    known = {str(r["id"]): r for r in rows}
    moves: list[tuple[str, str, str, int, int]] = []
    for job_id in ids:
        r = known.get(job_id)
        if r is None:
            # Finished, or no longer ours to place: just forget the expired lease.
            moves.append((job_id, "_", "drop", 0, 0))
            continue
        status = Status(r["status"])
        score = ready_score(r["priority"], r["seq"])
        if status in (Status.QUEUED, Status.RETRYING):
            moves.append((job_id, r["job_type"], "ready", score, 0))
        else:
            moves.append((job_id, r["job_type"], "drop", score, 0))
    await queue.move(moves)
    outcomes = Counter(r["status"] for r in rows)
    summary.recovered = outcomes[Status.QUEUED] + outcomes[Status.RETRYING]
    summary.dead_lettered = outcomes[Status.FAILED]
    summary.cancelled = outcomes[Status.CANCELLED]
    return summary


async def reconcile(store: JobStore, queues: dict[str, RedisQueue], lease_seconds: float,
                    page: int = 1000) -> Summary:
    """Walk every active job in PostgreSQL and put back what Redis lost (a flush, a
    failover to a stale replica, a push that failed after the commit)."""
    summary = Summary()
    after = 0
    while True:
        rows = await store.active_page(after, page)
        if not rows:
            return summary
        by_queue: dict[str, list[object]] = {}
        for r in rows:
            by_queue.setdefault(r["queue"], []).append(r)
        for name, group in by_queue.items():
            ready, delayed, leases = await queues[name].ensure(group, lease_seconds)
            summary.reconciled_ready += ready
            summary.reconciled_delayed += delayed
            summary.leases_restored += leases
        after = rows[-1]["seq"]
