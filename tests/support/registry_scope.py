"""Job types registered for one test only.

The registry and the Prometheus metrics are one per process, and other test modules
expect them to know the seed and ``tests.support.jobtypes`` types and no more (a worker
subprocess they spawn knows only those; the metrics tests compare series with the
registry). A test that registers its own types, directly or by loading a user module
through AJS_JOB_MODULES, does it inside :func:`scoped_registrations`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client.metrics import MetricWrapperBase

from shared.observability import metrics
from shared.registry import Registry, load, registry
from tests.conftest import TEST_MODULES


@contextmanager
def scoped_registrations() -> Iterator[Registry]:
    """Types registered inside the block are removed at its end, and the modules that
    registered them are forgotten, so a later ``load()`` imports them (and registers them)
    again. The baseline (seed types and the conftest's test types) is loaded first, so
    that it is never mistaken for the block's own."""
    load(TEST_MODULES)
    before = set(registry.names())
    try:
        yield registry
    finally:
        gone = set(registry.names()) - before
        for name in gone:
            jt = registry.remove(name)
            module = jt.handler.__module__ if jt is not None else "tests."
            if not module.startswith("tests."):  # a user module: import it afresh next time
                sys.modules.pop(module, None)
        _forget_series(gone)


def _forget_series(job_types: set[str]) -> None:
    """Drop the labelled series the test's jobs created for its own types."""
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        names = list(metric._labelnames)
        if "job_type" not in names:
            continue
        at = names.index("job_type")
        for labels in list(metric._metrics):
            if labels[at] in job_types:
                metric.remove(*labels)
