"""Reconcile: walk every active job in PostgreSQL and put back in Redis what it lost (a
flush, a failover to a stale replica, a push or move that failed after its commit). Not a
transition: PostgreSQL is only read, and Redis is filled in where it lacks a job."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.queue.redis_queue import RedisQueue
from shared.store.jobs import ACTIVE, JobStore


@dataclass
class Reconciled:
    reconciled_ready: int = 0
    reconciled_delayed: int = 0
    leases_restored: int = 0


async def reconcile(store: JobStore, queue_of: Callable[[str], RedisQueue],
                    lease_seconds: float, page: int = 1000) -> Reconciled:
    done = Reconciled()
    for status in ACTIVE:  # a page reads one status's index range, never finished jobs
        after = 0
        while rows := await store.active_page(status, after, page):
            by_queue: dict[str, list[Any]] = {}
            for r in rows:
                by_queue.setdefault(r["queue"], []).append(r)
            for name, group in by_queue.items():
                ready, delayed, leases = await queue_of(name).ensure(group, lease_seconds)
                done.reconciled_ready += ready
                done.reconciled_delayed += delayed
                done.leases_restored += leases
            after = rows[-1]["seq"]
    return done
