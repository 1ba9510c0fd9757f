"""The scheduler tick publishes the system's metrics: one Pushgateway group, one publisher.

- Gauges about the whole system (queue depth by queue and priority, delayed jobs, dead
  letter size, scheduled jobs waiting) come from Redis and PostgreSQL here and nowhere
  else, so two processes never report two values for one gauge.
- The counters that short-lived processes add to (API requests, jobs created, the
  scheduler's own lease recoveries) are read as sums from the Redis summed_counters.

The tick publishes while it holds its lock, so two overlapping ticks never push
snapshots out of order (an older snapshot landing last would look like a counter reset).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg
from prometheus_client.metrics_core import Metric
from redis.exceptions import RedisError

from shared.connections import Stores
from shared.core.lifecycle import Recovered
from shared.observability import metrics, summed_counters
from shared.observability.logs import get_logger
from shared.observability.pushgateway import scheduler_pusher
from shared.store.jobs import JobStore

log = get_logger("scheduler")
PRIORITIES = range(1, 11)


class Families:
    """A fixed set of metric families, in the shape push_to_gateway wants (a collector)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def count_recoveries(recovered: Recovered) -> None:
    metrics.scheduler_lease_recoveries_total.labels("requeued").inc(recovered.requeued)
    metrics.scheduler_lease_recoveries_total.labels("dead_letter").inc(recovered.dead_lettered)


async def set_gauges(store: JobStore, depth: dict[str, Any]) -> None:
    metrics.queue_depth.clear()
    metrics.queue_delayed.clear()
    for queue, d in depth.items():
        for p in PRIORITIES:
            metrics.queue_depth.labels(queue, str(p)).set(d["ready_by_priority"].get(p, 0))
        metrics.queue_delayed.labels(queue).set(d["delayed"])
    metrics.dead_letter_size.set(await store.dead_letter_size())
    metrics.scheduled_jobs_waiting.set(await store.scheduled_waiting())


async def publish(stores: Stores, store: JobStore, job_types: Iterable[str],
                  recovered: Recovered, depth: dict[str, Any]) -> bool:
    """Push the scheduler group; False when off or it failed (the tick goes on)."""
    settings = stores.settings
    metrics.init_shared_series(job_types)
    count_recoveries(recovered)
    pusher = scheduler_pusher(settings, metrics.CLUSTER)
    if pusher is None:
        summed_counters.THIS_PROCESS.discard()
        return False
    key = summed_counters.key(settings.redis_prefix)
    try:
        await set_gauges(store, depth)
        await summed_counters.THIS_PROCESS.flush(stores.redis, key)
        sums = await summed_counters.read(stores.redis, key)
    except (RedisError, OSError, asyncpg.PostgresError) as exc:
        log.warning("metrics not published", extra={"error": repr(exc)})
        return False
    pusher.collector = Families([*metrics.CLUSTER.collect(), *sums])
    return await pusher.push()
