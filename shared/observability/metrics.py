"""Prometheus metrics, with the seed's names, in three registries.

The registries differ in how their numbers reach Prometheus, because the processes differ:

- ``REGISTRY``: a worker's own metrics. A worker lives long enough to push them (its own
  Pushgateway group, ``instance`` = worker id) and serves them on its probe port.
- ``SHARED``: counters that many short-lived processes add to (API Lambda containers, the
  scheduler's invocations). A container must not push a group of its own (the Pushgateway
  never forgets one), so each adds its increments to one Redis hash
  (``shared.observability.summed_counters``) and the scheduler publishes the sums: one
  group, however many containers came and went.
- ``CLUSTER``: gauges about the whole system (queue depth, dead letter size). They have one
  publisher, the scheduler tick, so no two processes report different values.

A metric that appears in two registries (``lease_recoveries_total``: workers and the
scheduler both recover leases) has the same help text in both: the Pushgateway merges
families by name across groups and complains when they disagree.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from shared.core.status import Status

# ``*_created`` series double every counter in the Pushgateway for nothing we query.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)
SHARED = CollectorRegistry(auto_describe=True)
CLUSTER = CollectorRegistry(auto_describe=True)

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
               30.0)

LEASE_RECOVERIES_HELP = "Jobs recovered from expired leases, by what became of them."
# The outcomes of an attempt a worker counts (jobs_completed_total's status label).
ATTEMPT_OUTCOMES = (Status.COMPLETED, Status.RETRYING, Status.FAILED, Status.CANCELLED)
RECOVERY_OUTCOMES = ("requeued", "dead_letter")

# --- worker (REGISTRY) -------------------------------------------------------------------

jobs_completed_total = Counter("jobs_completed_total",
                               "Attempts that ended, by outcome status.",
                               ["job_type", "status"], registry=REGISTRY)
jobs_failed_total = Counter("jobs_failed_total", "Jobs that ended in the dead letter queue.",
                            ["job_type"], registry=REGISTRY)
job_retries_total = Counter("job_retries_total", "Attempts that failed and were retried.",
                            ["job_type"], registry=REGISTRY)
job_duration_seconds = Histogram("job_duration_seconds", "Handler run time per attempt.",
                                 ["job_type"], buckets=DURATION_BUCKETS, registry=REGISTRY)
job_wait_seconds = Histogram("job_wait_seconds", "Time from due (enqueue or schedule) to start.",
                             ["job_type"], buckets=DURATION_BUCKETS, registry=REGISTRY)
jobs_processing = Gauge("jobs_processing", "Jobs running in this worker.", registry=REGISTRY)
worker_active = Gauge("worker_active", "1 while this worker is claiming.", registry=REGISTRY)
lease_recoveries_total = Counter("lease_recoveries_total", LEASE_RECOVERIES_HELP, ["outcome"],
                                 registry=REGISTRY)
rate_limit_waits_total = Counter(
    "rate_limit_waits_total",
    "Claims in which a job type's rate or concurrency limit kept its ready jobs waiting.",
    ["job_type", "limit"], registry=REGISTRY)

# --- summed across processes in Redis (SHARED) ------------------------------------------

jobs_created_total = Counter("jobs_created_total", "Jobs created through the API.",
                             ["job_type"], registry=SHARED)
api_requests_total = Counter("api_requests_total", "API requests, by route template and status.",
                             ["method", "route", "status"], registry=SHARED)
api_request_duration_seconds = Histogram(
    "api_request_duration_seconds", "API request handling time, by route template.",
    ["method", "route"], buckets=API_BUCKETS, registry=SHARED)
scheduler_lease_recoveries_total = Counter("lease_recoveries_total", LEASE_RECOVERIES_HELP,
                                           ["outcome"], registry=SHARED)

# --- one publisher: the scheduler tick (CLUSTER) -----------------------------------------

queue_depth = Gauge("queue_depth", "Jobs ready to run in Redis, by queue and priority.",
                    ["queue", "priority"], registry=CLUSTER)
queue_delayed = Gauge("queue_delayed",
                      "Jobs in a queue's delayed set: retries in backoff, jobs due soon.",
                      ["queue"], registry=CLUSTER)
dead_letter_size = Gauge("dead_letter_size", "Jobs in the dead letter queue (status FAILED).",
                         registry=CLUSTER)
scheduled_jobs_waiting = Gauge(
    "scheduled_jobs_waiting",
    "Jobs stored but not yet handed to Redis (PENDING): scheduled beyond the look-ahead, or "
    "waiting for the sweep after a failed push.", registry=CLUSTER)


# --- recurring schedules ------------------------------------------------------------------
# The scheduler tick makes runs (enqueued, skipped_misfire: summed, like its other counters);
# workers skip runs at start (skipped_overlap: their own registry). One name and help text
# in both, so the Pushgateway merges the families.

SCHEDULE_RUNS_HELP = "Fire times of recurring schedules, by what became of them."
SCHEDULE_OUTCOMES = ("enqueued", "skipped_overlap", "skipped_misfire")
schedule_runs_total = Counter("schedule_runs_total", SCHEDULE_RUNS_HELP,
                              ["schedule", "outcome"], registry=SHARED)
schedule_runs_worker_total = Counter("schedule_runs_total", SCHEDULE_RUNS_HELP,
                                     ["schedule", "outcome"], registry=REGISTRY)
schedule_next_fire_timestamp_seconds = Gauge(
    "schedule_next_fire_timestamp_seconds",
    "When each unpaused schedule's next fire time not yet made into a job falls (Unix "
    "time). Normally ahead of now by up to the look-ahead; in the past: it did not fire.",
    ["schedule"], registry=CLUSTER)


def init_worker_series(job_types: Iterable[str],
                       limited: Iterable[tuple[str, str]] = ()) -> None:
    """Create every labelled series a worker can report, at zero, before its first push.

    A counter series that first appears already at 5 loses those 5 to ``rate()`` and
    ``increase()`` (they have no earlier sample to subtract); starting at 0 keeps every
    increment visible, and the dashboard shows a flat line instead of no data.
    """
    for name in job_types:
        for status in ATTEMPT_OUTCOMES:
            jobs_completed_total.labels(name, status.value)
        jobs_failed_total.labels(name)
        job_retries_total.labels(name)
        job_duration_seconds.labels(name)
        job_wait_seconds.labels(name)
    for outcome in RECOVERY_OUTCOMES:
        lease_recoveries_total.labels(outcome)
    for name, limit in limited:  # (job type, "rate" | "concurrency")
        rate_limit_waits_total.labels(name, limit)


def init_shared_series(job_types: Iterable[str]) -> None:
    """The same for the summed counters the scheduler publishes (see
    ``shared.observability.summed_counters``)."""
    for name in job_types:
        jobs_created_total.labels(name)
    for outcome in RECOVERY_OUTCOMES:
        scheduler_lease_recoveries_total.labels(outcome)
