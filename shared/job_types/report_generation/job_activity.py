"""The built-in report: what our jobs did over a time window, by job type.

Read from the transition history (and, for creations, the jobs' created_at), so it counts
events *in the window*: jobs created, attempts started, completions, retries,
dead-letterings and cancellations, and the run
time of each attempt that started and ended inside the window (from its PROCESSING
transition to the next one). Success rate = completed / (completed + failed) among the
jobs that reached an end in the window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

COLUMNS = ["job_type", "created", "attempts", "completed", "retried", "failed", "cancelled",
           "success_rate", "mean_seconds", "p50_seconds", "p95_seconds", "max_seconds"]

# job_transitions has no index on ``at``: over a very long history this scans it. The
# window's rows are few; the scan is what a bigger deployment would index first.
QUERY = """
WITH t AS (
    SELECT j.job_type, tr.from_status, tr.to_status, tr.at,
           lead(tr.at) OVER (PARTITION BY tr.job_id ORDER BY tr.id) AS next_at
    FROM job_transitions tr JOIN jobs j ON j.id = tr.job_id
    WHERE tr.at >= $1 AND tr.at < $2 AND ($3::text IS NULL OR j.job_type = $3)
), runs AS (
    SELECT *, CASE WHEN to_status = 'PROCESSING'
                   THEN extract(epoch FROM next_at - at)::float8 END AS run_seconds
    FROM t
), events AS (
    SELECT job_type,
           count(*) FILTER (WHERE to_status = 'PROCESSING') AS attempts,
           count(*) FILTER (WHERE to_status = 'COMPLETED') AS completed,
           count(*) FILTER (WHERE to_status = 'RETRYING') AS retried,
           count(*) FILTER (WHERE to_status = 'FAILED') AS failed,
           count(*) FILTER (WHERE to_status = 'CANCELLED') AS cancelled,
           avg(run_seconds) AS mean_seconds,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY run_seconds) AS p50_seconds,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY run_seconds) AS p95_seconds,
           max(run_seconds) AS max_seconds
    FROM runs GROUP BY job_type
), created AS (  -- a creation writes no history row: it is the job's created_at
    SELECT job_type, count(*) AS created FROM jobs
    WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR job_type = $3)
    GROUP BY job_type
)
SELECT job_type, coalesce(c.created, 0) AS created, coalesce(e.attempts, 0) AS attempts,
       coalesce(e.completed, 0) AS completed, coalesce(e.retried, 0) AS retried,
       coalesce(e.failed, 0) AS failed, coalesce(e.cancelled, 0) AS cancelled,
       e.mean_seconds, e.p50_seconds, e.p95_seconds, e.max_seconds
FROM events e FULL JOIN created c USING (job_type)
ORDER BY job_type
"""

_COUNTS = ("created", "attempts", "completed", "retried", "failed", "cancelled")


def success_rate(completed: int, failed: int) -> float | None:
    return completed / (completed + failed) if completed + failed else None


@dataclass
class Activity:
    since: datetime
    until: datetime
    rows: list[dict[str, Any]]
    totals: dict[str, Any] = field(default_factory=dict)


async def gather(db: asyncpg.Pool, since: datetime, until: datetime,
                 job_type: str | None = None) -> Activity:
    records = await db.fetch(QUERY, since, until, job_type)
    rows = []
    for r in records:
        row = dict(r)
        row["success_rate"] = success_rate(row["completed"], row["failed"])
        rows.append({c: row[c] for c in COLUMNS})
    totals: dict[str, Any] = {c: sum(r[c] for r in rows) for c in _COUNTS}
    totals["success_rate"] = success_rate(totals["completed"], totals["failed"])
    return Activity(since, until, rows, totals)
