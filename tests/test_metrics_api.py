"""API request metrics: counted by route template and status, timed, and added to the
Redis sums before the request ends; API containers never push a group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.connections import Stores
from shared.observability import summed_counters
from shared.settings import Settings
from tests.conftest import admin_headers
from tests.support.invoke import LambdaContext

EVENTS = Path(__file__).parent / "events"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def metered_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app, configured to publish (a Pushgateway URL is set; nothing listens
    there, and the API never talks to it: only Redis is written)."""
    from functions.api.app import create_app

    # increments made by earlier tests in this process are not ours
    summed_counters.THIS_PROCESS.discard()
    app = create_app(settings.model_copy(update={"pushgateway_url": "http://127.0.0.1:9"}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api",
                                 headers=await admin_headers(settings)) as client:
        yield client
    await app.state.stores.close()


async def shared_sums(stores: Stores, settings: Settings) -> dict[tuple[str, str], float]:
    """{(sample name, labels as sorted JSON): value} straight from the Redis hash."""
    raw = await stores.redis.hgetall(summed_counters.key(settings.redis_prefix))
    out = {}
    for field, value in raw.items():
        name, labels = json.loads(field)
        out[(name, json.dumps(dict(labels), sort_keys=True))] = float(value)
    return out


def labels(**kw: str) -> str:
    return json.dumps(kw, sort_keys=True)


async def test_requests_are_counted_by_route_template_and_status(
        metered_api: httpx.AsyncClient, stores: Stores, settings: Settings) -> None:
    created = await metered_api.post("/api/v1/jobs", json={"job_type": "noop", "payload": {}})
    assert created.status_code == 201
    job_id = created.json()["id"]
    assert (await metered_api.get(f"/api/v1/jobs/{job_id}")).status_code == 200
    assert (await metered_api.get(f"/api/v1/jobs/{uuid.uuid4()}")).status_code == 404
    assert (await metered_api.post("/api/v1/jobs", json={"job_type": "nope"})).status_code == 422
    assert (await metered_api.get("/api/v1/no-such-thing")).status_code == 404
    big = {"job_type": "noop", "payload": {"x": "y" * (settings.max_payload_bytes + 10)}}
    assert (await metered_api.post("/api/v1/jobs", json=big)).status_code == 413

    sums = await shared_sums(stores, settings)
    expect = {
        ("POST", "/api/v1/jobs", "201"): 1,
        ("GET", "/api/v1/jobs/{job_id}", "200"): 1,
        ("GET", "/api/v1/jobs/{job_id}", "404"): 1,
        ("POST", "/api/v1/jobs", "422"): 1,
        ("GET", "unmatched", "404"): 1,
        ("POST", "unmatched", "413"): 1,
    }
    for (method, route, status), n in expect.items():
        key = ("api_requests_total", labels(method=method, route=route, status=status))
        assert sums.get(key) == n, (key, sums)
    # Timed by route: three requests to /api/v1/jobs (201, 422; the 413 never routed).
    count = sums[("api_request_duration_seconds_count", labels(method="POST",
                                                              route="/api/v1/jobs"))]
    assert count == 2
    assert sums[("jobs_created_total", labels(job_type="noop"))] == 1


async def test_batch_creates_count_every_job(metered_api: httpx.AsyncClient, stores: Stores,
                                             settings: Settings) -> None:
    jobs = [{"job_type": "noop", "payload": {}}] * 3 + [{"job_type": "flaky", "payload": {}}]
    assert (await metered_api.post("/api/v1/jobs/batch", json={"jobs": jobs})).status_code == 201
    replay = await metered_api.post("/api/v1/jobs", json={"job_type": "noop", "payload": {}},
                                    headers={"Idempotency-Key": "k1"})
    again = await metered_api.post("/api/v1/jobs", json={"job_type": "noop", "payload": {}},
                                   headers={"Idempotency-Key": "k1"})
    assert (replay.status_code, again.status_code) == (201, 200)
    sums = await shared_sums(stores, settings)
    assert sums[("jobs_created_total", labels(job_type="noop"))] == 4  # the replay is no job
    assert sums[("jobs_created_total", labels(job_type="flaky"))] == 1


async def test_without_a_pushgateway_the_api_writes_no_counters(
        api: httpx.AsyncClient, stores: Stores, settings: Settings) -> None:
    assert not settings.pushgateway_url
    assert (await api.post("/api/v1/jobs", json={"job_type": "noop", "payload": {}})
            ).status_code == 201
    assert not await stores.redis.exists(summed_counters.key(settings.redis_prefix))


def test_lambda_handlers_are_not_traced_outside_lambda() -> None:
    """No Tracer (and no X-Ray SDK import) outside Lambda; the handler still answers."""
    from functions.api import handler as api_handler
    from functions.scheduler import handler as scheduler_handler

    assert api_handler.tracer is None and scheduler_handler.tracer is None
    event = json.loads((EVENTS / "list_jobs.json").read_text())
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/api/v1/openapi.json"
    event["rawQueryString"], event["queryStringParameters"] = "", {}
    response: dict[str, Any] = api_handler.handler(event, LambdaContext())
    assert response["statusCode"] == 200
    assert json.loads(response["body"])["info"]["title"] == "async-job-scheduler"


TRACED = """
import json, sys
from functions.tracing import lambda_tracer, traced
from tests.conftest import admin_headers
from tests.support.invoke import LambdaContext
tracer = lambda_tracer("api")
handler = traced(tracer)(lambda event, context: {"ok": event["n"] + 1})
print(json.dumps({"tracer": tracer is not None, "xray": "aws_xray_sdk" in sys.modules,
                  "result": handler({"n": 1}, LambdaContext())}))
"""


@pytest.mark.parametrize(("env", "on"), [
    ({"LAMBDA_TASK_ROOT": "/var/task"}, True),
    ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "true"}, False),
])
def test_lambda_handlers_are_traced_in_lambda_unless_disabled(env: dict[str, str],
                                                              on: bool) -> None:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("POWERTOOLS_", "LAMBDA_", "AWS_SAM"))}
    environ.update(env, AWS_XRAY_CONTEXT_MISSING="IGNORE_ERROR", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", TRACED], env=environ, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"tracer": on, "xray": on, "result": {"ok": 2}}
