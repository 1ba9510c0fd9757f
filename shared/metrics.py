"""Prometheus metrics, with the seed's names. Each process records into its own registry;
how they reach Prometheus (Pushgateway, scrape endpoint) is decided by the process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

jobs_created_total = Counter("jobs_created_total", "Jobs accepted by the API or library.",
                             ["job_type"], registry=REGISTRY)
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
lease_recoveries_total = Counter("lease_recoveries_total",
                                 "Jobs recovered from expired leases.", ["outcome"],
                                 registry=REGISTRY)
