"""Counters that add up across processes: every process adds its increments to one Redis
hash, and one publisher (the scheduler tick) pushes the sums.

Why not push from each process: the API runs in many short-lived Lambda containers. A
group per container would stay in the Pushgateway after the container is gone (it never
forgets a group), and one shared group does not help either, because a push *replaces*
the group's values instead of adding to them: the last container to push would win.

How it stays correct:

- A process's counters in ``metrics.SHARED`` are ordinary prometheus_client objects.
  :meth:`Increments.flush` (after each API request, at each scheduler tick) takes the
  difference between their values now and what this process has already added, and adds
  it to the hash with ``HINCRBYFLOAT``, all in one ``MULTI``/``EXEC``: one round trip,
  and a reader never sees half of one request's increments.
- A flush that fails keeps the difference for the next one, so a Redis blip loses nothing
  (only a container that dies before its next request can lose what it held).
- Histograms work the same way: every cumulative bucket, the count and the sum are each a
  monotonic counter, and summing cumulative buckets gives the buckets of the combined
  histogram.
- Losing the hash (Redis flushed) looks to Prometheus like a counter reset, which
  ``rate()`` and ``increase()`` absorb. It is the one piece of Redis state PostgreSQL does
  not rebuild: it holds metrics, not jobs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from shared.observability import metrics
from shared.queue.redis_queue import RedisClient, cluster_reachable

PUBLISHED = "published:"  # marks a field the publisher has pushed (see read())
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def key(prefix: str) -> str:
    """The Redis hash holding the sums of one deployment (one key prefix)."""
    return f"{prefix}:metrics:shared"


_FIELDS: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}


def _field(name: str, labels: dict[str, str]) -> str:
    # Memoised: a snapshot runs after every API request, over every series of the registry.
    ident = (name, tuple(sorted(labels.items())))
    field = _FIELDS.get(ident)
    if field is None:
        field = _FIELDS[ident] = json.dumps([name, list(ident[1])], separators=(",", ":"))
    return field


def snapshot(registry: CollectorRegistry) -> dict[str, float]:
    """Every sample of ``registry`` by hash field (sample name and labels)."""
    return {_field(s.name, s.labels): s.value
            for family in registry.collect() for s in family.samples}


class Increments:
    """Adds this process's increments of a registry's counters to a Redis hash."""

    def __init__(self, registry: CollectorRegistry = metrics.SHARED) -> None:
        self.registry = registry
        self._added: dict[str, float] = {}  # what this process has added so far, per field
        self._busy = False
        self._again = False

    async def flush(self, redis: RedisClient, hash_key: str) -> int:
        """Add what changed since the last flush; returns the number of fields written.

        Concurrent requests in one process (uvicorn) do not queue up behind each other: a
        flush already running goes round once more for them, and they return at once.
        A field is written the first time this process sees it even at zero, so every
        bucket of a histogram exists from its first observation on.
        """
        if self._busy:
            self._again = True
            return 0
        self._busy = True
        written = 0
        try:
            while True:
                self._again = False
                now = snapshot(self.registry)
                delta = {f: v - self._added.get(f, 0.0) for f, v in now.items()
                         if f not in self._added or v != self._added[f]}
                if delta:
                    # One hash, so one slot: MULTI/EXEC works on a Redis Cluster too.
                    with cluster_reachable():
                        async with redis.pipeline(transaction=True) as pipe:
                            for field, amount in delta.items():
                                pipe.hincrbyfloat(hash_key, field, amount)
                            await pipe.execute()
                    self._added.update((f, now[f]) for f in delta)
                    written += len(delta)
                if not self._again:
                    return written
        finally:
            self._busy = False

    def discard(self) -> None:
        """Drop increments that nobody will publish (the Pushgateway is not configured),
        so that they do not surface later under another configuration."""
        self._added = snapshot(self.registry)


THIS_PROCESS = Increments()


async def read(redis: RedisClient, hash_key: str,
               registry: CollectorRegistry = metrics.SHARED) -> list[Metric]:
    """The sums as metric families, ready to push (by the one publisher only).

    A series is published at 0 the first time, and with its sum from the next push on:
    ``rate()`` and ``increase()`` cannot count what a series already held when Prometheus
    first saw it, so a route's first requests would otherwise never show. Which series
    were published is kept in the hash itself (fields marked ``PUBLISHED``), so a cold-started
    publisher does not zero them again (Prometheus would take that for a counter reset and
    count them twice), and the marks are lost only together with the sums.

    Series this process knows locally start at zero when nobody has added to them yet
    (see ``metrics.init_shared_series``); fields of metrics this process does not define
    (a newer deployment's) are left out rather than guessed at.
    """
    values = dict.fromkeys(snapshot(registry), 0.0)
    raw = {_text(f): v for f, v in (await redis.hgetall(hash_key)).items()}
    sums = {f: float(v) for f, v in raw.items() if not f.startswith(PUBLISHED)}
    new = [f for f in sums if PUBLISHED + f not in raw]
    if new:
        await redis.hset(hash_key, mapping={PUBLISHED + f: 1 for f in new})
    for field, value in sums.items():
        values[field] = 0.0 if field in new else value
    return families(values, registry)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def families(values: dict[str, float], registry: CollectorRegistry) -> list[Metric]:
    """Rebuild metric families (type and help from ``registry``) from hash fields."""
    owner: dict[str, Metric] = {}
    out: list[Metric] = []
    for family in registry.collect():
        fam = Metric(family.name, family.documentation, family.type)
        out.append(fam)
        for suffix in SUFFIXES.get(family.type, ()):
            owner[family.name + suffix] = fam
    parsed: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for field, value in values.items():
        name, items = json.loads(field)
        fam_for = owner.get(name)
        if fam_for is not None:
            parsed.setdefault(fam_for.name, []).append((name, dict(items), value))
    for fam in out:
        samples = parsed.get(fam.name, [])
        if fam.type == "histogram":
            _complete_histogram(fam, samples)
        else:
            for name, labels, value in sorted(samples, key=_order):
                fam.add_sample(name, labels, value)
    return [fam for fam in out if fam.samples]


def _order(sample: tuple[str, dict[str, str], float]) -> tuple[str, list[tuple[str, str]]]:
    return sample[0], sorted(sample[1].items())


def _complete_histogram(fam: Metric,
                        samples: Iterable[tuple[str, dict[str, str], float]]) -> None:
    """Every series gets every bucket the family has (a bucket nobody wrote is 0), buckets
    in order, then count and sum, as the exposition format expects."""
    series: dict[tuple[tuple[str, str], ...], dict[str, float]] = {}
    bounds: set[str] = set()
    for name, labels, value in samples:
        le = labels.pop("le", None)
        parts = series.setdefault(tuple(sorted(labels.items())), {})
        if name.endswith("_bucket") and le is not None:
            bounds.add(le)
            parts[f"le:{le}"] = value
        else:
            parts[name[len(fam.name):]] = value
    ordered = sorted(bounds, key=lambda b: math.inf if b == "+Inf" else float(b))
    for labels_key, parts in sorted(series.items()):
        labels = dict(labels_key)
        for le in ordered:
            fam.add_sample(f"{fam.name}_bucket", {**labels, "le": le}, parts.get(f"le:{le}", 0.0))
        fam.add_sample(f"{fam.name}_count", labels, parts.get("_count", 0.0))
        fam.add_sample(f"{fam.name}_sum", labels, parts.get("_sum", 0.0))
