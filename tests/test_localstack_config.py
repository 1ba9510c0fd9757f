"""Configuration from Secrets Manager and SSM (LocalStack): the deployed functions and
workers are told only where the database and Redis URLs live, and read them at cold start."""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.api_schemas import JobCreate
from shared.connections import Stores
from shared.core.service import JobService
from shared.secret_settings import resolve_secrets
from shared.settings import Settings
from tests.conftest import DATABASE_URL, REDIS_URL
from tests.support.localstack import LocalStack

# The first LocalStack test of a session may build LocalStack's venv (about a minute).
pytestmark = pytest.mark.timeout(300)

EVENTS = Path(__file__).parent / "events"
# Where the environment alone would send the processes: nothing listens there.
NOWHERE = {"database_url": "postgresql://nobody@127.0.0.1:1/nowhere",
           "redis_url": "redis://127.0.0.1:1/0"}


def _store_urls(ls: LocalStack, database_secret: str, redis_url: str) -> dict[str, Any]:
    """Put the URLs where a deployment keeps them; returns the settings that name them."""
    name = "ajs/test/" + secrets.token_hex(4)
    arn = ls.client("secretsmanager").create_secret(
        Name=f"{name}/database", SecretString=database_secret)["ARN"]
    ls.client("ssm").put_parameter(Name=f"/{name}/redis-url", Value=redis_url,
                                   Type="SecureString")
    return {"database_url_secret_arn": arn, "redis_url_parameter": f"/{name}/redis-url",
            **ls.settings()}


async def _invoke(spawn: Any, handler: str, event: Path, **overrides: Any) -> list[Any]:
    proc = await spawn("-m", "tests.support.invoke", handler, str(event), **overrides)
    assert await asyncio.wait_for(proc.wait(), 90) == 0, proc.log_path.read_text()
    lines = proc.log_path.read_text().splitlines()
    return [json.loads(line[7:]) for line in lines if line.startswith("RESULT ")]


async def test_urls_come_from_the_secret_and_the_parameter(aws_env: LocalStack) -> None:
    named = await asyncio.to_thread(_store_urls, aws_env, DATABASE_URL, REDIS_URL)
    resolved = await asyncio.to_thread(resolve_secrets, Settings(**NOWHERE, **named))
    assert resolved.database_url == DATABASE_URL
    assert resolved.redis_url == REDIS_URL
    assert resolved.lock_urls == [REDIS_URL]  # the Redlock follows the resolved Redis


async def test_payload_key_comes_from_its_secret(aws_env: LocalStack) -> None:
    """The key sealing webhook credentials lives in Secrets Manager, like the URLs."""
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    arn = await asyncio.to_thread(lambda: aws_env.client("secretsmanager").create_secret(
        Name="ajs/test/" + secrets.token_hex(4) + "/payload-key",
        SecretString=f"{key}\n")["ARN"])
    resolved = await asyncio.to_thread(resolve_secrets, Settings(
        **NOWHERE, payload_key_secret_arn=arn, **aws_env.settings()))
    assert resolved.payload_key == key
    assert resolved.database_url == NOWHERE["database_url"]  # nothing else was named


async def test_rds_json_secret_completes_the_proxy_url(aws_env: LocalStack) -> None:
    """RDS's managed master secret holds only a user and a password: the host and database
    come from AJS_DATABASE_URL (here an RDS Proxy endpoint), and odd characters in the
    password survive the trip into the URL."""
    secret = json.dumps({"username": "app", "password": "p@ss:w/rd%", "engine": "postgres"})
    named = await asyncio.to_thread(_store_urls, aws_env, secret, REDIS_URL)
    base = "postgresql://ignored@my-proxy.proxy-abc.eu-west-1.rds.amazonaws.com:5432/jobs"
    resolved = await asyncio.to_thread(
        resolve_secrets, Settings(**{**NOWHERE, "database_url": base + "?sslmode=require"},
                                  **named))
    assert resolved.database_url == (
        "postgresql://app:p%40ss%3Aw%2Frd%25@my-proxy.proxy-abc.eu-west-1.rds.amazonaws.com"
        ":5432/jobs?sslmode=require")


async def test_scheduler_function_cold_starts_on_urls_from_secret_stores(
        aws_env: LocalStack, settings: Settings, registry: Any, stores: Stores,
        spawn: Any) -> None:
    """The deployed function's environment names the secret and the parameter and points
    nowhere by itself; its tick still promotes a due job in PostgreSQL and Redis."""
    named = await asyncio.to_thread(_store_urls, aws_env, DATABASE_URL, REDIS_URL)
    service = JobService(Stores(settings.model_copy(
        update={"schedule_lookahead_seconds": 0})), registry)
    due = datetime.now(UTC) + timedelta(seconds=30)
    job, _ = await service.create(JobCreate(job_type="noop", payload={}, scheduled_at=due))
    await service.stores.close()
    assert job["status"] == "PENDING"

    [summary] = await _invoke(spawn, "functions.scheduler.handler:handler",
                              EVENTS / "scheduled-event.json", **NOWHERE, **named)
    assert summary["skipped"] is False and summary["promoted"] == 1
    row = await (await stores.store()).get(job["id"])
    assert row["status"] == "QUEUED"
    assert await stores.redis.zscore(stores.queue().k_delayed, str(job["id"])) is not None


async def test_api_function_cold_starts_on_urls_from_secret_stores(
        aws_env: LocalStack, service: JobService, spawn: Any) -> None:
    named = await asyncio.to_thread(_store_urls, aws_env, DATABASE_URL, REDIS_URL)
    job, _ = await service.create(JobCreate(job_type="noop", payload={}))
    [response] = await _invoke(spawn, "functions.api.handler:handler",
                               EVENTS / "list_jobs.json", **NOWHERE, **named)
    assert response["statusCode"] == 200, response
    assert [j["id"] for j in json.loads(response["body"])["items"]] == [str(job["id"])]
