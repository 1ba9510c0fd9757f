"""Counters summed across processes in Redis (shared/observability/summed_counters.py):
what many API containers add up to, whatever they do in between."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.connections import Stores
from shared.observability import summed_counters
from shared.settings import Settings
from tests.support.prom import close
from tests.support.servers import free_port

BUCKETS = (0.01, 0.1, 1.0)


class Container:
    """One API container's registry (each Lambda container is its own process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("requests_total", "Requests.", ["route"],
                                registry=self.registry)
        self.latency = Histogram("latency_seconds", "Latency.", ["route"], buckets=BUCKETS,
                                 registry=self.registry)
        self.increments = summed_counters.Increments(self.registry)

    def serve(self, route: str, seconds: float) -> None:
        self.requests.labels(route).inc()
        self.latency.labels(route).observe(seconds)


Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def rendered(families: list[object]) -> Values:
    """Render like a push would, parse back: {(sample, labels): value}."""
    class Families:
        def collect(self) -> list[object]:
            return families

    text = generate_latest(Families()).decode()  # type: ignore[arg-type]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def summed(redis: aioredis.Redis, key: str, registry: CollectorRegistry) -> Values:
    """What the publisher pushes once every series has been published (at 0) once."""
    await summed_counters.read(redis, key, registry)
    return rendered(await summed_counters.read(redis, key, registry))


async def test_counters_of_many_containers_add_up(stores: Stores, settings: Settings) -> None:
    key = summed_counters.key(settings.redis_prefix)
    containers = [Container() for _ in range(3)]
    rng = random.Random(7)
    served: list[tuple[str, float]] = []
    for round_ in range(4):
        for c in containers:
            for _ in range(rng.randint(0, 5)):
                route, seconds = rng.choice(["/jobs", "/jobs/{job_id}"]), rng.random() * 2
                c.serve(route, seconds)
                served.append((route, seconds))
            if round_ % 2 == 0 or c is containers[0]:
                await c.increments.flush(stores.redis, key)
    for c in containers:  # the last request of each container flushes
        await c.increments.flush(stores.redis, key)

    values = await summed(stores.redis, key, containers[0].registry)
    for route in ("/jobs", "/jobs/{job_id}"):
        mine = [s for r, s in served if r == route]
        labels = (("route", route),)
        assert values[("requests_total", labels)] == len(mine)
        assert values[("latency_seconds_count", labels)] == len(mine)
        assert close(values[("latency_seconds_sum", labels)], sum(mine))
        for le in (*BUCKETS, float("inf")):
            name = "+Inf" if le == float("inf") else str(le)
            bucket = values[("latency_seconds_bucket", (("le", name), ("route", route)))]
            assert bucket == sum(1 for s in mine if s <= le), (route, le)


async def test_a_failed_flush_keeps_its_increments_for_the_next(stores: Stores,
                                                                 settings: Settings) -> None:
    key = summed_counters.key(settings.redis_prefix)
    c = Container()
    c.serve("/jobs", 0.05)
    await c.increments.flush(stores.redis, key)
    c.serve("/jobs", 0.05)
    c.serve("/jobs", 0.5)
    down = aioredis.Redis(port=free_port(), socket_connect_timeout=1,
                          retry=Retry(NoBackoff(), 0))
    with pytest.raises((RedisConnectionError, OSError)):
        await c.increments.flush(down, key)
    await down.aclose()
    c.serve("/jobs", 5.0)
    await c.increments.flush(stores.redis, key)

    values = await summed(stores.redis, key, c.registry)
    assert values[("requests_total", (("route", "/jobs"),))] == 4
    assert values[("latency_seconds_bucket", (("le", "0.1"), ("route", "/jobs")))] == 2
    assert values[("latency_seconds_bucket", (("le", "+Inf"), ("route", "/jobs")))] == 4


async def test_concurrent_requests_in_one_process_add_each_increment_once(
        stores: Stores, settings: Settings) -> None:
    key = summed_counters.key(settings.redis_prefix)
    c = Container()

    async def request(i: int) -> None:
        c.serve("/jobs", 0.001 * i)
        await c.increments.flush(stores.redis, key)

    await asyncio.gather(*(request(i) for i in range(50)))
    await c.increments.flush(stores.redis, key)  # whatever a busy flush left for later
    values = await summed(stores.redis, key, c.registry)
    assert values[("requests_total", (("route", "/jobs"),))] == 50


async def test_series_nobody_wrote_are_published_at_zero(stores: Stores,
                                                         settings: Settings) -> None:
    """The publisher knows its label sets: they start at 0, so rate() sees the first
    increment instead of a series that appears already counted."""
    c = Container()
    c.requests.labels("/health")
    c.latency.labels("/health")
    values = rendered(await summed_counters.read(
        stores.redis, summed_counters.key(settings.redis_prefix), c.registry))
    assert values[("requests_total", (("route", "/health"),))] == 0
    assert values[("latency_seconds_bucket", (("le", "+Inf"), ("route", "/health")))] == 0


async def test_a_new_series_is_published_at_zero_once(stores: Stores,
                                                     settings: Settings) -> None:
    """Prometheus cannot count what a series held when first seen: it first sees 0, and
    a publisher that starts cold (a new Lambda container) does not zero it again."""
    key = summed_counters.key(settings.redis_prefix)
    c = Container()
    c.serve("/jobs", 0.2)
    await c.increments.flush(stores.redis, key)
    field = ("requests_total", (("route", "/jobs"),))
    assert rendered(await summed_counters.read(stores.redis, key, c.registry))[field] == 0
    assert rendered(await summed_counters.read(stores.redis, key, c.registry))[field] == 1
    cold = Container()  # another process, nothing local
    assert rendered(await summed_counters.read(stores.redis, key, cold.registry))[field] == 1
    c.serve("/jobs/{job_id}", 0.2)
    await c.increments.flush(stores.redis, key)
    values = rendered(await summed_counters.read(stores.redis, key, cold.registry))
    assert values[field] == 1 and values[("requests_total", (("route", "/jobs/{job_id}"),))] == 0


def test_discard_drops_increments_nobody_will_publish() -> None:
    c = Container()
    c.serve("/jobs", 0.1)
    c.increments.discard()
    assert c.increments._added == summed_counters.snapshot(c.registry)
