"""Every SQL statement on the schedules table.

A schedule's ``next_fire_at`` is its watermark: the earliest fire time not yet made into a
job. The scheduler locks due schedules with ``FOR UPDATE SKIP LOCKED`` (two overlapping
passes split them instead of doubling them), inserts their runs and moves the watermark in
one transaction (``Lifecycle.fire``); the unique key on ``jobs (schedule_id, fire_time)``
makes a second insert of a fire time a no-op whatever the timing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

SCHEDULE_COLUMNS = """id, namespace, name, cron, timezone, job_type, payload, priority, max_retries,
    timeout_seconds, queue, paused, overlap, misfire, start_at, end_at, source, next_fire_at,
    created_at, updated_at"""

# What a PATCH may change (the name is the schedule's identity and the source its origin).
EDITABLE = ("cron", "timezone", "job_type", "payload", "priority", "max_retries",
            "timeout_seconds", "queue", "paused", "overlap", "misfire", "start_at", "end_at",
            "next_fire_at")


@dataclass(frozen=True, slots=True)
class NewSchedule:
    name: str
    cron: str
    timezone: str
    job_type: str
    payload: dict[str, Any]
    priority: int
    max_retries: int
    timeout_seconds: float
    queue: str
    overlap: str
    misfire: str
    source: str
    next_fire_at: datetime | None
    paused: bool = False
    start_at: datetime | None = None
    end_at: datetime | None = None
    namespace: str | None = None  # the tenant; None: unbound (and every code schedule)


def label(namespace: str | None, name: str) -> str:
    """How a schedule is named in metrics and logs: its name, after its tenant's."""
    return name if namespace is None else f"{namespace}/{name}"


class ScheduleStore:
    """Takes a pool or one connection (``Lifecycle.fire`` runs inside a transaction).

    ``namespace`` on a read or write: only a schedule of that tenant (None: any), as the
    job verbs do; another tenant's schedule is simply not found."""

    def __init__(self, pool: asyncpg.Pool | asyncpg.Connection
                 | asyncpg.pool.PoolConnectionProxy) -> None:
        self.pool = pool

    async def create(self, s: NewSchedule) -> asyncpg.Record | None:
        """The new schedule, or None when its tenant has one of that name."""
        return await self.pool.fetchrow(
            f"""
            INSERT INTO schedules (name, cron, timezone, job_type, payload, priority,
                max_retries, timeout_seconds, queue, paused, overlap, misfire, start_at,
                end_at, source, next_fire_at, namespace)
            VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                    $16, $17)
            ON CONFLICT ((coalesce(namespace, '')), name) DO NOTHING
            RETURNING {SCHEDULE_COLUMNS}""",
            s.name, s.cron, s.timezone, s.job_type, s.payload, s.priority,
            s.max_retries, s.timeout_seconds, s.queue, s.paused, s.overlap, s.misfire,
            s.start_at, s.end_at, s.source, s.next_fire_at, s.namespace)

    async def get(self, schedule_id: uuid.UUID, namespace: str | None = None
                  ) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            f"""SELECT {SCHEDULE_COLUMNS} FROM schedules
                WHERE id = $1 AND ($2::text IS NULL OR namespace = $2)""",
            schedule_id, namespace)

    async def unbound_by_name(self, names: Sequence[str]) -> list[asyncpg.Record]:
        """The schedules without a tenant holding these names (where code ones live)."""
        return await self.pool.fetch(
            f"""SELECT {SCHEDULE_COLUMNS} FROM schedules
                WHERE namespace IS NULL AND name = ANY($1::text[])""",
            list(names))

    async def page(self, *, after: tuple[str, uuid.UUID] | None, limit: int,
                   namespace: str | None = None) -> list[asyncpg.Record]:
        """By name, then id (two tenants may share a name); ``after`` (name, id) is the
        keyset cursor."""
        name, last_id = after if after is not None else (None, None)
        return await self.pool.fetch(
            f"""SELECT {SCHEDULE_COLUMNS} FROM schedules
                WHERE ($1::text IS NULL OR (name, id) > ($1, $4::uuid))
                  AND ($3::text IS NULL OR namespace = $3)
                ORDER BY name, id LIMIT $2""",
            name, limit, namespace, last_id)

    async def all_active(self, limit: int) -> list[asyncpg.Record]:
        """Unpaused schedules with a fire time left (the next-due gauge)."""
        return await self.pool.fetch(
            "SELECT namespace, name, next_fire_at FROM schedules WHERE NOT paused "
            "AND next_fire_at IS NOT NULL ORDER BY name LIMIT $1", limit)

    async def update(self, schedule_id: uuid.UUID, changes: dict[str, Any],
                     namespace: str | None = None) -> asyncpg.Record | None:
        """Apply ``changes`` (keys from ``EDITABLE`` only: column names are never taken
        from input); None for an unknown id."""
        sets, args = [], [schedule_id, namespace]
        for name in EDITABLE:
            if name in changes:
                value = changes[name]
                args.append(value)
                sets.append(f"{name} = ${len(args)}")
        if not sets:
            return await self.get(schedule_id, namespace)
        return await self.pool.fetchrow(
            f"""UPDATE schedules SET {", ".join(sets)}, updated_at = now()
                WHERE id = $1 AND ($2::text IS NULL OR namespace = $2)
                RETURNING {SCHEDULE_COLUMNS}""", *args)

    async def delete(self, schedule_id: uuid.UUID, namespace: str | None = None
                     ) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            f"""DELETE FROM schedules WHERE id = $1 AND ($2::text IS NULL OR namespace = $2)
                RETURNING {SCHEDULE_COLUMNS}""", schedule_id, namespace)

    async def recent_runs(self, schedule_id: uuid.UUID, limit: int) -> list[asyncpg.Record]:
        """The latest runs, newest fire time first (served by the unique key's index)."""
        return await self.pool.fetch(
            """SELECT id, fire_time, status, status_reason, started_at, finished_at
               FROM jobs WHERE schedule_id = $1 ORDER BY fire_time DESC LIMIT $2""",
            schedule_id, limit)

    # --- the scheduler's verbs (inside Lifecycle.fire's transaction) -------------------------

    async def lock_due(self, horizon: datetime, limit: int,
                       exclude: Sequence[uuid.UUID] = ()) -> list[asyncpg.Record]:
        """Unpaused schedules with a fire time before ``horizon``, locked for this
        transaction; those another pass holds are skipped, not waited for. ``exclude``:
        those this pass already fired (the per-pass bound on runs holds)."""
        return await self.pool.fetch(
            f"""SELECT {SCHEDULE_COLUMNS} FROM schedules
                WHERE NOT paused AND next_fire_at IS NOT NULL AND next_fire_at <= $1
                  AND NOT (id = ANY($3::uuid[]))
                ORDER BY next_fire_at LIMIT $2 FOR UPDATE SKIP LOCKED""",
            horizon, limit, list(exclude))

    async def advance(self, schedule_id: uuid.UUID, watermark: datetime,
                      next_fire_at: datetime | None) -> bool:
        """Move the watermark, only from where this pass read it."""
        done = await self.pool.execute(
            "UPDATE schedules SET next_fire_at = $3, updated_at = now() "
            "WHERE id = $1 AND next_fire_at = $2",
            schedule_id, watermark, next_fire_at)
        return done.split()[-1] == "1"
