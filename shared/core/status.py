"""The single vocabulary for job states, and which moves between them are legal.

The same table is installed in PostgreSQL by the first migration, where a trigger refuses
any illegal move whatever code path attempts it; a test keeps the two copies equal.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    PENDING = "PENDING"  # stored, not in Redis yet: scheduled for later, or Redis was down
    QUEUED = "QUEUED"  # handed to Redis: ready, or in the delayed set until due
    PROCESSING = "PROCESSING"  # claimed by a worker that holds its lease
    RETRYING = "RETRYING"  # failed, waiting in the delayed set for its backoff
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"  # retries exhausted or a permanent error: the dead letter queue
    CANCELLED = "CANCELLED"


S = Status

TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.PENDING: frozenset({S.QUEUED, S.CANCELLED}),
    S.QUEUED: frozenset({S.PROCESSING, S.PENDING, S.CANCELLED}),
    # QUEUED from PROCESSING: a lost lease, or a graceful shutdown handing the job back.
    S.PROCESSING: frozenset({S.COMPLETED, S.RETRYING, S.FAILED, S.CANCELLED, S.QUEUED}),
    # PROCESSING from RETRYING: workers promote due retries inside Redis, PostgreSQL learns
    # of it only when the job is claimed.
    S.RETRYING: frozenset({S.PROCESSING, S.CANCELLED}),
    S.FAILED: frozenset({S.QUEUED}),  # a redrive from the dead letter queue
    S.COMPLETED: frozenset(),
    S.CANCELLED: frozenset(),
}

TERMINAL = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED})
CANCELLABLE = frozenset({S.PENDING, S.QUEUED, S.RETRYING})
CLAIMABLE = frozenset({S.QUEUED, S.RETRYING})


def sources_of(target: Status) -> list[str]:
    """Every state from which ``target`` may be entered, for ``WHERE status = ANY($n)``."""
    return sorted(s.value for s, targets in TRANSITIONS.items() if target in targets)


def is_legal(source: Status, target: Status) -> bool:
    return target in TRANSITIONS[source]
