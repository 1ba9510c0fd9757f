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

SCHEDULE_COLUMNS = """id, name, cron, timezone, job_type, payload, priority, max_retries,
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


class ScheduleStore:
    """Takes a pool or one connection (``Lifecycle.fire`` runs inside a transaction)."""

    def __init__(self, pool: asyncpg.Pool | asyncpg.Connection
                 | asyncpg.pool.PoolConnectionProxy) -> None:
        self.pool = pool

    async def create(self, s: NewSchedule) -> asyncpg.Record | None:
        """The new schedule, or None when the name is taken."""
        return await self.pool.fetchrow(
            f"""
            INSERT INTO schedules (name, cron, timezone, job_type, payload, priority,
                max_retries, timeout_seconds, queue, paused, overlap, misfire, start_at,
                end_at, source, next_fire_at)
            VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                    $16)
            ON CONFLICT (name) DO NOTHING
            RETURNING {SCHEDULE_COLUMNS}""",
            s.name, s.cron, s.timezone, s.job_type, s.payload, s.priority,
            s.max_retries, s.timeout_seconds, s.queue, s.paused, s.overlap, s.misfire,
            s.start_at, s.end_at, s.source, s.next_fire_at)

    async def get(self, schedule_id: uuid.UUID) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1", schedule_id)

    async def by_name(self, names: Sequence[str]) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = ANY($1::text[])",
            list(names))

    async def page(self, *, after_name: str | None, limit: int) -> list[asyncpg.Record]:
        """By name; ``after_name`` is the keyset cursor."""
        return await self.pool.fetch(
            f"""SELECT {SCHEDULE_COLUMNS} FROM schedules
                WHERE $1::text IS NULL OR name > $1 ORDER BY name LIMIT $2""",
            after_name, limit)

    async def all_active(self, limit: int) -> list[asyncpg.Record]:
        """Unpaused schedules with a fire time left (the next-due gauge)."""
        return await self.pool.fetch(
            "SELECT name, next_fire_at FROM schedules WHERE NOT paused "
            "AND next_fire_at IS NOT NULL ORDER BY name LIMIT $1", limit)

    async def update(self, schedule_id: uuid.UUID, changes: dict[str, Any]
                     ) -> asyncpg.Record | None:
        """Apply ``changes`` (keys from ``EDITABLE`` only: column names are never taken
        from input); None for an unknown id."""
        sets, args = [], [schedule_id]
        for name in EDITABLE:
            if name in changes:
                value = changes[name]
                args.append(value)
                sets.append(f"{name} = ${len(args)}")
        if not sets:
            return await self.get(schedule_id)
        return await self.pool.fetchrow(
            f"""UPDATE schedules SET {", ".join(sets)}, updated_at = now()
                WHERE id = $1 RETURNING {SCHEDULE_COLUMNS}""", *args)

    async def delete(self, schedule_id: uuid.UUID) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            f"DELETE FROM schedules WHERE id = $1 RETURNING {SCHEDULE_COLUMNS}", schedule_id)

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
