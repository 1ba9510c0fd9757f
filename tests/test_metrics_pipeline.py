"""End to end: the real API and a real worker process run a mixed workload (jobs that
complete, retry, fail), the worker and the scheduler push to a real Pushgateway, a real
Prometheus scrapes it with the repository's configuration and alert rules, and every
dashboard and alert query runs there. The throughput, success, duration, retry, dead
letter, queue and API panels must agree with PostgreSQL.

Panel queries are evaluated at the timestamp of a scrape and with a window longer than
the test, and every series starts at 0 before its first increment: then ``rate()`` and
``increase()`` do no extrapolation and their results are exact counts, not estimates.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from functions.api.app import create_app
from functions.scheduler.tick import tick
from shared.connections import Stores
from shared.observability import summed_counters
from shared.observability.metrics import DURATION_BUCKETS
from shared.registry import Registry
from shared.settings import Settings
from tests.conftest import admin_headers
from tests.support.prom import (
    GRAFANA_VARS,
    Prometheus,
    Pushgateway,
    close,
    dashboards,
    monitoring,
    panel_queries,
    panels,
    rule_queries,
    substitute,
)
from tests.support.servers import free_port
from tests.support.waits import eventually

WINDOW = 600.0  # seconds: GRAFANA_VARS' $__rate_interval
assert GRAFANA_VARS["$__rate_interval"] == "10m"


class Stack:
    """Prometheus, the Pushgateway, the API in process and the scheduler tick."""

    def __init__(self, settings: Settings, registry: Registry, client: httpx.AsyncClient,
                 pgw: Pushgateway, prom: Prometheus, api: httpx.AsyncClient) -> None:
        self.settings = settings
        self.registry = registry
        self.client = client
        self.pgw = pgw
        self.prom = prom
        self.api = api
        self.requests = 0

    async def call(self, method: str, url: str, **kw: Any) -> httpx.Response:
        self.requests += 1
        return await self.api.request(method, url, **kw)

    async def tick(self) -> None:
        stores = Stores(self.settings)
        try:
            assert (await tick(stores, self.registry))["metrics_published"] is True
        finally:
            await stores.close()

    @staticmethod
    def expr(title: str, ref: str = "A") -> str:
        (expr,) = [t["expr"] for _, d in dashboards() for p in panels(d) if p["title"] == title
                   for t in p.get("targets", []) if t["refId"] == ref]
        return str(expr)

    async def panel(self, title: str, ref: str = "A", at: float | None = None,
                    by: str | None = None) -> dict[str, float]:
        """A panel query's values, evaluated as Grafana would (see GRAFANA_VARS)."""
        return await self.prom.values(self.client, substitute(self.expr(title, ref)), by=by,
                                      at=at)

    async def scraped(self, expr: str) -> bool:
        return bool(await self.prom.query(self.client, expr))


@pytest.fixture
async def stack(settings: Settings, registry: Registry) -> AsyncIterator[Stack]:
    # increments left by earlier tests in this process are not ours
    summed_counters.THIS_PROCESS.discard()
    async with httpx.AsyncClient(timeout=10) as client, monitoring(client) as (pgw, prom):
        assert prom is not None
        s = settings.model_copy(update={"pushgateway_url": pgw.url})
        app = create_app(s)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api",
                                     headers=await admin_headers(s)) as api:
            yield Stack(s, registry, client, pgw, prom, api)
        await app.state.stores.close()


async def pg_facts(db: asyncpg.Pool) -> dict[str, dict[str, float]]:
    rows = await db.fetch("""
        SELECT job_type,
               count(*) AS created,
               count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
               count(*) FILTER (WHERE status = 'FAILED') AS failed,
               count(*) FILTER (WHERE status = 'QUEUED') AS queued,
               sum(attempts) AS attempts,
               sum(greatest(attempts - 1, 0)) AS retries,
               extract(epoch FROM max(finished_at - created_at)) AS longest
        FROM jobs GROUP BY job_type""")
    return {r["job_type"]: {k: float(v or 0) for k, v in r.items() if k != "job_type"}
            for r in rows}


def per_type(facts: dict[str, dict[str, float]], key: str, types: list[str]) -> dict[str, float]:
    return {t: facts.get(t, {}).get(key, 0.0) for t in types}


def bucket_above(seconds: float) -> float:
    return next(b for b in DURATION_BUCKETS if b >= seconds)


async def test_dashboard_and_alert_queries_agree_with_postgres(
        stack: Stack, spawn: Any, db: asyncpg.Pool, tmp_path: Path) -> None:
    types = stack.registry.names()
    await stack.tick()  # the scheduler group, every series at 0
    probe = free_port()
    worker = await spawn("-m", "worker", "--concurrency", "4",
                         pushgateway_url=stack.pgw.url, push_interval_seconds=0.25,
                         probe_port=probe, probe_host="127.0.0.1", worker_id="w-pipeline")
    # Prometheus must see every counter at 0 before the first job: see the module doc.
    await eventually(lambda: stack.scraped('jobs_completed_total{instance="w-pipeline"}'),
                     timeout=30, what="worker series scraped")
    await eventually(lambda: stack.scraped("jobs_created_total"), what="scheduler scraped")

    jobs: list[dict[str, Any]] = [{"job_type": "noop", "payload": {}, "priority": p}
                                  for p in range(1, 11)]
    jobs += [{"job_type": "flaky", "payload": {"fail_times": 1}}] * 4  # retry, complete
    jobs += [{"job_type": "flaky", "payload": {"fail_times": 1, "permanent": True}}] * 2
    jobs += [{"job_type": "broken", "payload": {}}] * 2  # three attempts, dead letter
    for job in jobs:
        assert (await stack.call("POST", "/api/v1/jobs", json=job)).status_code == 201
    batch = {"jobs": [{"job_type": "noop", "payload": {"tag": str(i)}} for i in range(5)]}
    assert (await stack.call("POST", "/api/v1/jobs/batch", json=batch)).status_code == 201
    assert (await stack.call("GET", f"/api/v1/jobs/{uuid.uuid4()}")).status_code == 404
    assert (await stack.call("POST", "/api/v1/jobs", json={"job_type": "?"})).status_code == 422

    async def all_finished() -> bool:
        return not await db.fetchval("SELECT count(*) FROM jobs WHERE status NOT IN "
                                     "('COMPLETED', 'FAILED', 'CANCELLED')")

    await eventually(all_finished, timeout=30, what="every job finished")
    # The scheduler publishes the API's counters: routes seen for the first time at 0,
    # then (after a scrape) with their sums.
    await stack.tick()
    await eventually(lambda: stack.scraped('api_requests_total{status="422"}'),
                     what="new API series scraped at 0")
    await stack.tick()
    facts = await pg_facts(db)
    completed = per_type(facts, "completed", types)
    assert sum(completed.values()) == 19 and facts["broken"]["failed"] == 2

    async def prometheus_caught_up() -> bool:
        done = await stack.prom.values(
            stack.client, 'sum by (job_type) (jobs_completed_total{status="COMPLETED"})',
            by="job_type")
        created = await stack.prom.values(stack.client, "sum(jobs_created_total)")
        requests = await stack.prom.values(stack.client, "sum(api_requests_total)")
        return (done == completed and created.get("") == len(jobs) + 5
                and requests.get("") == stack.requests)

    await eventually(prometheus_caught_up, timeout=20, what="Prometheus caught up")
    # The latest scrape of any group: the API's counters come with the scheduler's group,
    # which can be scraped after the worker's (a loaded machine showed 20 of 21 requests).
    (at,) = (await stack.prom.values(
        stack.client, 'max(timestamp(push_time_seconds))')).values()

    # Throughput, success, retries, dead letters: exact counts.
    rates = await stack.panel("Throughput by type", at=at, by="job_type")
    assert {t: v * WINDOW for t, v in rates.items()} == pytest.approx(completed)
    failed = per_type(facts, "failed", types)
    success = sum(completed.values()) / (sum(completed.values()) + sum(failed.values()))
    assert close((await stack.panel("Success rate (10 min)", at=at))[""], success)
    by_type = await stack.panel("Success rate by type (10 min)", at=at, by="job_type")
    for t in ("noop", "flaky", "broken"):
        assert close(by_type[t], completed[t] / (completed[t] + failed[t])), t
    retries = await stack.panel("Retries by type", at=at, by="job_type")
    assert {t: v * WINDOW for t, v in retries.items()} == pytest.approx(
        per_type(facts, "retries", types))
    assert (await stack.panel("Dead letter queue", "A", at=at))[""] == sum(failed.values())
    dead_rate = await stack.panel("Dead letter queue", "B", at=at, by="job_type")
    assert {t: v * WINDOW / 60 for t, v in dead_rate.items()} == pytest.approx(failed)
    outcomes = await stack.panel("Attempt outcomes", at=at, by="status")
    assert sum(outcomes.values()) * WINDOW == pytest.approx(
        sum(per_type(facts, "attempts", types).values()))

    # Duration and wait: quantiles ordered and inside the bucket of the longest job.
    longest = bucket_above(max(f["longest"] for f in facts.values()))
    for title in ("Job duration p50 / p95 / p99", "Wait to start p50 / p95 / p99"):
        p50, p95, p99 = [(await stack.panel(title, ref, at=at))[""] for ref in "ABC"]
        assert 0 < p50 <= p95 <= p99 <= longest, (title, p50, p95, p99, longest)
    attempts = await stack.prom.values(
        stack.client, "sum(rate(job_duration_seconds_count[10m]))", at=at)
    assert attempts[""] * WINDOW == pytest.approx(
        sum(per_type(facts, "attempts", types).values()))

    # The API's counters, summed in Redis and published by the scheduler (5 min window).
    created = await stack.panel("Jobs created by type", at=at, by="job_type")
    assert {t: v * 300 for t, v in created.items()} == pytest.approx(
        per_type(facts, "created", types))
    api = await stack.prom.query(stack.client, substitute(stack.expr(
        "API requests by route and status")), at=at)
    assert sum(float(r["value"][1]) for r in api) * 300 == pytest.approx(stack.requests)
    by_status = {(r["metric"]["route"], r["metric"]["status"]): float(r["value"][1]) * 300
                 for r in api if float(r["value"][1])}  # earlier tests' label sets stay at 0
    assert by_status == pytest.approx({("/api/v1/jobs", "201"): len(jobs),
                                       ("/api/v1/jobs/batch", "201"): 1,
                                       ("/api/v1/jobs/{job_id}", "404"): 1,
                                       ("/api/v1/jobs", "422"): 1})

    # Queues and workers now: nothing waiting, one live idle worker.
    assert sum((await stack.panel("Queue depth by priority", by="priority")).values()) == 0
    assert (await stack.panel("Live workers"))[""] == 1
    assert (await stack.panel("Processing"))[""] == 0

    # Every query the dashboard and the alert rules hold runs without error.
    for where, expr in panel_queries() + rule_queries():
        try:
            await stack.prom.query(stack.client, substitute(expr))
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from None

    async def rules_evaluated() -> list[dict[str, Any]]:
        rules = await stack.prom.rules(stack.client)
        return [r for r in rules if not r["lastEvaluation"].startswith("0001")] == rules and rules

    rules = await eventually(rules_evaluated, what="alert rules evaluated")
    assert {r["name"]: r["health"] for r in rules} == {r["name"]: "ok" for r in rules}
    assert len(rules) == len(rule_queries())

    # The worker's own endpoints agree too.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{probe}") as direct:
        assert (await direct.get("/healthz")).status_code == 200
        assert (await direct.get("/readyz")).status_code == 200
        text = (await direct.get("/metrics")).text
        assert f'jobs_completed_total{{job_type="noop",status="COMPLETED"}} ' \
               f'{completed["noop"]}' in text

    # A clean stop deletes the worker's group.
    worker.send_signal(signal.SIGTERM)
    assert await worker.wait() == 0
    groups = await stack.pgw.groups(stack.client)
    assert [g["job"] for g in groups] == ["ajs_scheduler"]

    # Every log line about a job names it, its type and its attempt.
    about_jobs = []
    for line in worker.log_path.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if "job_id" in entry:
                about_jobs.append(entry)
                assert {"job_type", "attempt"} <= set(entry), entry
    assert any(e["message"] == "job dead-lettered" for e in about_jobs)


async def test_queue_panels_agree_with_postgres(stack: Stack, db: asyncpg.Pool) -> None:
    """No worker runs: what the API queues stays queued, and the scheduler's gauges say so."""
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    jobs = ([{"job_type": "noop", "payload": {}, "priority": 1}] * 3
            + [{"job_type": "noop", "payload": {}, "priority": 5}] * 2
            + [{"job_type": "flaky", "payload": {}, "priority": 10}]
            + [{"job_type": "noop", "payload": {}, "scheduled_at": later}] * 2)
    for job in jobs:
        assert (await stack.call("POST", "/api/v1/jobs", json=job)).status_code == 201
    await stack.tick()
    rows = await db.fetch("SELECT priority::text AS p, count(*) AS n FROM jobs "
                          "WHERE status = 'QUEUED' GROUP BY priority")
    queued = {str(p): 0.0 for p in range(1, 11)} | {r["p"]: float(r["n"]) for r in rows}
    pending = await db.fetchval("SELECT count(*) FROM jobs WHERE status = 'PENDING'")
    assert sum(queued.values()) == 6 and pending == 2

    async def depth_published() -> bool:
        return await stack.panel("Queue depth by priority", by="priority") == queued

    await eventually(depth_published, timeout=20, what="queue depth in Prometheus")
    assert (await stack.panel("Jobs ready"))[""] == 6
    assert (await stack.panel("Scheduled, not yet queued"))[""] == pending
    assert (await stack.panel("Delayed and scheduled jobs", "B"))[""] == pending
    assert (await stack.panel("Dead letter queue", "A"))[""] == 0
    assert (await stack.panel("Live workers"))[""] == 0
