"""What the console's overview and dead-letter page read: activity over a window, and dead
jobs grouped by type and error. Both answer in milliseconds whatever the size of ``jobs``.

- **activity** reads ``job_activity`` (a row per minute and type, folded from the count
  deltas each tick: migration 0005) plus the deltas not yet folded: a few thousand rows for
  a day, however many jobs ran in it.
- **dead-letter groups** read the newest dead jobs (at most ``DEAD_SCAN_MAX``) through the
  status index and group them by type and the first line of their error; the total per
  type is exact (the counts of 0003), the groups are exact when the dead-letter queue
  holds no more than that (``complete`` says whether it did).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from shared.store.jobs import ACTIVITY_SUMS, ALL_NAMESPACES, _list_filter

# Newest dead jobs the groups are built from; a queue holding more is summarised from its
# newest, and says so.
DEAD_SCAN_MAX = 10_000
GROUPS_MAX = 100  # most groups returned (the largest first)
SAMPLE_IDS = 5  # job ids shown per group
ERROR_SUMMARY_CHARS = 200  # of the error's first line


class Window(StrEnum):
    hour = "1h"
    day = "24h"


# (bucket length, buckets) of each window
WINDOWS: dict[Window, tuple[timedelta, int]] = {
    Window.hour: (timedelta(minutes=5), 12),
    Window.day: (timedelta(hours=1), 24),
}

EVENTS = ("created", "completed", "retried", "dead_lettered", "cancelled")


class ActivityCounts(BaseModel):
    created: int = Field(0, description="Jobs created.")
    completed: int = Field(0, description="Jobs that completed.")
    retried: int = Field(0, description="Failed attempts that another attempt follows.")
    dead_lettered: int = Field(0, description="Jobs whose retries ran out (FAILED).")
    cancelled: int = Field(0, description="Jobs cancelled.")

    @property
    def finished(self) -> int:
        return self.completed + self.dead_lettered + self.cancelled

    def add(self, row: Any) -> None:
        for event in EVENTS:
            setattr(self, event, getattr(self, event) + int(row[event]))


class ActivityBucket(ActivityCounts):
    start: datetime
    finished_per_minute: float = Field(
        0.0, description="Completed, dead-lettered and cancelled jobs per minute.")


class TypeActivity(ActivityCounts):
    failure_rate: float | None = Field(
        None, description="dead_lettered / (completed + dead_lettered); null: neither.")


class Activity(BaseModel):
    window: Window
    start: datetime
    end: datetime
    bucket_seconds: int
    namespace: str | None = Field(description="The namespace counted; null: every one.")
    totals: TypeActivity
    by_type: dict[str, TypeActivity]
    buckets: list[ActivityBucket] = Field(description="Oldest first; the last is current.")
    throughput_per_minute: float = Field(
        description="Finished jobs (completed, dead-lettered, cancelled) per minute over "
        "the window.")


def _failure_rate(counts: ActivityCounts) -> float | None:
    settled = counts.completed + counts.dead_lettered
    return counts.dead_lettered / settled if settled else None


def window_bounds(window: Window, now: datetime | None = None
                  ) -> tuple[datetime, datetime, timedelta, int]:
    """``(start, end, bucket, buckets)``: buckets aligned to their own length (5-minute
    or hourly boundaries, UTC), the last one holding ``now``."""
    bucket, n = WINDOWS[window]
    now = now or datetime.now(UTC)
    step = bucket.total_seconds()
    end_s = math.floor(now.timestamp() / step) * step + step
    end = datetime.fromtimestamp(end_s, UTC)
    return end - bucket * n, end, bucket, n


async def activity(pool: Any, window: Window, namespace: str | None = None,
                   now: datetime | None = None) -> Activity:
    """Jobs created, completed, retried, dead-lettered and cancelled in the window, in
    total, by type and per bucket. ``namespace``: only that tenant's jobs ('' for jobs
    without one); None: every job. ``pool``: an asyncpg pool or connection."""
    start, end, bucket, n = window_bounds(window, now)
    rows = await pool.fetch(
        f"""
        SELECT least(floor(extract(epoch FROM a.at - $1) / $2)::int, $4 - 1) AS bucket,
               a.job_type,
               sum(a.created)::bigint AS created, sum(a.completed)::bigint AS completed,
               sum(a.retried)::bigint AS retried,
               sum(a.dead_lettered)::bigint AS dead_lettered,
               sum(a.cancelled)::bigint AS cancelled
        FROM (SELECT minute AS at, job_type, created, completed, retried, dead_lettered,
                     cancelled
              FROM job_activity WHERE namespace = $3 AND minute >= $1
              UNION ALL
              SELECT at, job_type, {ACTIVITY_SUMS}
              FROM job_count_deltas WHERE at >= $1 AND ($3 = '{ALL_NAMESPACES}'
                                                        OR namespace = $3)
              GROUP BY at, job_type) a
        GROUP BY 1, 2""",
        start, bucket.total_seconds(),
        ALL_NAMESPACES if namespace is None else namespace, n)
    totals = TypeActivity()
    by_type: dict[str, TypeActivity] = {}
    buckets = [ActivityBucket(start=start + bucket * i) for i in range(n)]
    for row in rows:
        totals.add(row)
        by_type.setdefault(row["job_type"], TypeActivity()).add(row)
        buckets[max(int(row["bucket"]), 0)].add(row)
    minutes = bucket.total_seconds() / 60
    for b in buckets:
        b.finished_per_minute = b.finished / minutes
    for counts in (totals, *by_type.values()):
        counts.failure_rate = _failure_rate(counts)
    return Activity(
        window=window, start=start, end=end, bucket_seconds=int(bucket.total_seconds()),
        namespace=namespace, totals=totals, by_type=dict(sorted(by_type.items())),
        buckets=buckets, throughput_per_minute=totals.finished / (minutes * n))


class DeadLetterGroup(BaseModel):
    job_type: str
    error: str = Field(description=f"The first line of the error, at most "
                       f"{ERROR_SUMMARY_CHARS} characters ('' for none).")
    count: int
    latest_failure_at: datetime | None
    sample_ids: list[str] = Field(description=f"Up to {SAMPLE_IDS} job ids, newest first.")


class DeadLetterGroups(BaseModel):
    groups: list[DeadLetterGroup] = Field(description="Largest first.")
    scanned: int = Field(description="Dead jobs read to build the groups (the newest).")
    total: int = Field(description="Dead jobs in all (exact).")
    complete: bool = Field(description="Every dead job is in a group (none left unread, "
                           "no group left out).")


async def dead_letter_groups(pool: Any, namespace: str | None = None,
                             job_type: str | None = None) -> DeadLetterGroups:
    """Dead jobs grouped by (job type, first line of the error), largest group first.

    Read from the newest ``DEAD_SCAN_MAX`` dead jobs (the status index, newest first), so
    the cost is bounded however many there are; ``total`` comes from the exact counts.
    """
    # Only the filters given, so that the planner picks the status (or namespace) index;
    # the status written out, not a parameter: a prepared statement's generic plan cannot
    # use the partial indexes on status for "status = $1" (500 ms instead of 1 at a
    # million jobs).
    where, args = _list_filter(None, job_type, None, namespace)
    where = f"{where} AND status = 'FAILED'" if where else "WHERE status = 'FAILED'"
    rows = await pool.fetch(
        f"""
        WITH dead AS (
            SELECT id, job_type, finished_at, seq,
                   left(split_part(coalesce(last_error, ''), E'\\n', 1),
                        {ERROR_SUMMARY_CHARS}) AS error
            FROM jobs {where}
            ORDER BY seq DESC LIMIT {DEAD_SCAN_MAX}),
        grouped AS (
            SELECT job_type, error, count(*) AS n, max(finished_at) AS latest,
                   (array_agg(id::text ORDER BY seq DESC))[1:{SAMPLE_IDS}] AS sample_ids
            FROM dead GROUP BY job_type, error)
        SELECT job_type, error, n, latest, sample_ids,
               (SELECT count(*) FROM dead) AS scanned,
               (SELECT count(*) FROM grouped) AS groups
        FROM grouped ORDER BY n DESC, latest DESC NULLS LAST LIMIT {GROUPS_MAX}""",
        *args)
    total = await pool.fetchval(
        """
        SELECT coalesce(sum(n), 0)::bigint
        FROM (SELECT namespace, job_type, n FROM job_counts WHERE status = 'FAILED'
              UNION ALL
              SELECT namespace, job_type, n FROM job_count_deltas WHERE status = 'FAILED') c
        WHERE ($1::text IS NULL OR namespace = $1)
          AND ($2::text IS NULL OR job_type = $2)""",
        namespace, job_type)
    scanned = int(rows[0]["scanned"]) if rows else 0
    group_count = int(rows[0]["groups"]) if rows else 0
    return DeadLetterGroups(
        groups=[DeadLetterGroup(job_type=r["job_type"], error=r["error"], count=r["n"],
                                latest_failure_at=r["latest"],
                                sample_ids=list(r["sample_ids"])) for r in rows],
        scanned=scanned, total=int(total),
        complete=scanned < DEAD_SCAN_MAX and group_count <= GROUPS_MAX)
