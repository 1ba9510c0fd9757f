"""Pushing metrics to the Prometheus Pushgateway: who pushes which group, and how.

Groups (the ``job`` label names them; alert rules and dashboards rely on these names):

- ``ajs_worker``, one per worker: ``instance`` = the worker id, plus its ``queue``. Pushed
  every ``push_interval_seconds`` and deleted when the worker stops cleanly. A worker
  that dies leaves its group, and the group's ``push_time_seconds`` stops moving: that is
  how the alert rules find it.
- ``ajs_scheduler``, exactly one: the system's gauges and the counters summed in Redis
  (``shared.observability.summed_counters``), pushed by the scheduler tick. API containers
  push nothing.

Every push is a ``PUT``: it replaces the whole group, so a label set that no longer exists
disappears with the next push instead of lingering. Pushes go through prometheus_client's
own client in a thread, with a short timeout, so a slow gateway never blocks an event
loop; a Lambda function awaits its push before it returns, so no request is left in
flight when the container is frozen. Failures are logged, never raised: metrics must not
stop a worker or fail a tick.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from prometheus_client.exposition import delete_from_gateway, push_to_gateway
from prometheus_client.registry import Collector

from shared.observability.logs import get_logger
from shared.settings import Settings

WORKER_JOB = "ajs_worker"
SCHEDULER_JOB = "ajs_scheduler"

log = get_logger("metrics")


class Pusher:
    """One Pushgateway group: push it, push it on an interval, delete it."""

    def __init__(self, url: str, job: str, grouping_key: dict[str, str], collector: Collector,
                 timeout: float = 2.0) -> None:
        self.url = url
        self.job = job
        self.grouping_key = grouping_key
        self.collector = collector
        self.timeout = timeout
        self.pushes = 0
        self._failing = False

    async def push(self) -> bool:
        return await self._call("push", push_to_gateway, self.url, self.job, self.collector,
                                grouping_key=self.grouping_key, timeout=self.timeout)

    async def delete(self) -> bool:
        return await self._call("delete", delete_from_gateway, self.url, self.job,
                                grouping_key=self.grouping_key, timeout=self.timeout)

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Push now, then every ``interval`` seconds, until ``stop`` is set.

        Stopping waits for a push in flight instead of cancelling it: the thread would
        carry on regardless, and a PUT landing after the DELETE would bring the group back.
        """
        while not stop.is_set():
            await self.push()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> bool:
        try:
            await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:  # URLError, HTTPError, timeouts: report once per outage
            if not self._failing:
                log.warning(f"pushgateway {what} failed",
                            extra={"job": self.job, **self.grouping_key, "error": repr(exc)})
            self._failing = True
            return False
        if self._failing:
            log.info(f"pushgateway {what} works again", extra={"job": self.job,
                                                                **self.grouping_key})
        self._failing = False
        if what == "push":
            self.pushes += 1
        return True


def worker_pusher(settings: Settings, collector: Collector) -> Pusher | None:
    """The pusher of one worker's own group, or None when no Pushgateway is configured."""
    if not settings.pushgateway_url:
        return None
    return Pusher(settings.pushgateway_url, WORKER_JOB,
                  {"instance": settings.worker_id, "queue": settings.queue}, collector,
                  settings.push_timeout_seconds)


def scheduler_pusher(settings: Settings, collector: Collector) -> Pusher | None:
    if not settings.pushgateway_url:
        return None
    return Pusher(settings.pushgateway_url, SCHEDULER_JOB, {}, collector,
                  settings.push_timeout_seconds)
