"""Schedules: make the runs of recurring schedules due within the look-ahead, ahead of time.

Each run is a job due at its fire time, placed in Redis's delayed set now, so a worker
starts it at the due millisecond: the scheduler's one-minute tick only keeps the look-ahead
filled. Safe to run concurrently with itself: each transaction locks the schedules it fires
(SKIP LOCKED), and the unique key on ``jobs (schedule_id, fire_time)`` refuses a fire time
made twice. ``now`` is a parameter so tests control the clock.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from shared.core.lifecycle import Fired, Lifecycle
from shared.observability import metrics
from shared.store.schedules import ScheduleStore, label

ROUNDS = 100  # transactions per pass at most: a pass always ends


@dataclass
class SchedulesFired:
    schedules: int = 0
    enqueued: int = 0
    skipped_misfire: int = 0
    by_schedule: list[Fired] = field(default_factory=list)


async def fire_schedules(lifecycle: Lifecycle, *, lookahead_seconds: float,
                         grace_seconds: float, max_runs: int, batch: int = 100,
                         now: datetime | None = None) -> SchedulesFired:
    """Fire every due schedule once (at most ``max_runs`` runs each), and count it."""
    now = now or datetime.now(UTC)
    horizon = now + timedelta(seconds=lookahead_seconds)
    done = SchedulesFired()
    seen: list[uuid.UUID] = []
    for _ in range(ROUNDS):
        fired = await lifecycle.fire(now=now, horizon=horizon, grace=grace_seconds,
                                     max_runs=max_runs, limit=batch, exclude=seen)
        for schedule_id, f in fired:
            seen.append(schedule_id)
            done.schedules += 1
            done.enqueued += f.enqueued
            done.skipped_misfire += f.skipped_misfire
            done.by_schedule.append(f)
            metrics.schedule_runs_total.labels(f.schedule, "enqueued").inc(f.enqueued)
            metrics.schedule_runs_total.labels(f.schedule, "skipped_misfire").inc(
                f.skipped_misfire)
        if len(fired) < batch:
            break
    return done


async def set_next_fire_gauges(schedules: ScheduleStore, limit: int = 10_000) -> int:
    """The next-due gauge of every unpaused schedule (one publisher: the tick). Cleared
    first, so a deleted, paused or finished schedule stops reporting."""
    rows = await schedules.all_active(limit)
    metrics.schedule_next_fire_timestamp_seconds.clear()
    for r in rows:
        gauge = metrics.schedule_next_fire_timestamp_seconds.labels(
            label(r["namespace"], r["name"]))
        gauge.set(r["next_fire_at"].timestamp())
    return len(rows)
