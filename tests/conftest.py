"""Fixtures: every test gets its own PostgreSQL schema and Redis key prefix on the real
servers (DATABASE_URL / REDIS_URL, default: the local ones), migrated with alembic."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from shared.connections import Stores
from shared.core.service import JobService
from shared.registry import Registry, load
from shared.settings import Settings
from shared.store import migrate
from shared.store.api_keys import ApiKeyStore
from shared.store.jobs import JobStore
from tests.support.jobtypes import RUNS_DDL

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_MODULES = ["tests.support.jobtypes"]
# The session-wide LocalStack (started only by tests that ask for it).
pytest_plugins = ["tests.support.localstack"]


def make_settings(schema: str, prefix: str, **overrides: Any) -> Settings:
    """Fast settings for tests: short leases, quick retries, no jitter."""
    values: dict[str, Any] = {
        "database_url": DATABASE_URL,
        "redis_url": REDIS_URL,
        "db_schema": schema,
        "redis_prefix": prefix,
        "job_modules": TEST_MODULES,
        "db_pool_max": 5,
        "lease_seconds": 5.0,
        "reap_interval_seconds": 0.5,
        "idle_poll_seconds": 0.5,
        "retry_backoff_base": 0.2,
        "retry_backoff_factor": 2.0,
        "retry_jitter": 0.0,
        "shutdown_grace_seconds": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


def settings_env(settings: Settings, worker_id: bool = False) -> dict[str, str]:
    """The environment that gives a subprocess (worker, function) these settings; the
    worker id is left to the process (host-pid) unless ``worker_id`` is set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AJS_")}
    for name, value in settings.model_dump().items():
        if name == "worker_id" and not worker_id:
            continue
        if isinstance(value, list):
            value = ",".join(value)
        env[f"AJS_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture
def namespace() -> str:
    return "t_" + secrets.token_hex(5)


async def migrated_settings(namespace: str, **overrides: Any) -> Settings:
    """Settings over a new schema and key prefix, migrated, with the test job types'
    ``runs`` table (drop them with ``drop_namespace``)."""
    s = make_settings(namespace, namespace, **overrides)
    await asyncio.to_thread(migrate.upgrade, s.database_url, s.db_schema)
    conn = await asyncpg.connect(DATABASE_URL, server_settings={"search_path": namespace})
    try:
        await conn.execute(RUNS_DDL)
    finally:
        await conn.close()
    return s


@pytest.fixture
async def settings(namespace: str) -> AsyncIterator[Settings]:
    yield await migrated_settings(namespace)
    await drop_namespace(namespace)


async def drop_namespace(namespace: str, *statements: str) -> None:
    """Remove a test's schema (after ``statements``, run first) and its Redis keys."""
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in r.scan_iter(match=f"*{namespace}*", count=1000)]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


@pytest.fixture
def registry() -> Registry:
    return load(TEST_MODULES)


@pytest.fixture
async def stores(settings: Settings) -> AsyncIterator[Stores]:
    s = Stores(settings)
    yield s
    await s.close()


@pytest.fixture
async def store(stores: Stores) -> JobStore:
    return await stores.store()


@pytest.fixture
async def db(stores: Stores) -> asyncpg.Pool:
    return await stores.pool()


@pytest.fixture
async def service(stores: Stores, registry: Registry) -> JobService:
    return JobService(stores, registry)


async def create_key(settings: Settings, *scopes: str, namespace: str | None = None,
                     name: str = "test") -> str:
    """A real API key in the test's schema (as ``python -m functions.api.keys create``)."""
    conn = await asyncpg.connect(settings.database_url,
                                 server_settings={"search_path": settings.db_schema})
    try:
        key, _ = await ApiKeyStore(conn).create(name, scopes or ("admin",), namespace)
        return key
    finally:
        await conn.close()


async def admin_headers(settings: Settings) -> dict[str, str]:
    """For tests that build their own app (or process): an unbound admin key's header."""
    return {"Authorization": f"Bearer {await create_key(settings, 'admin', name='admin')}"}


@pytest.fixture
async def api_app(settings: Settings) -> AsyncIterator[Any]:
    """The real FastAPI app in process, over the test's schema and prefix."""
    from functions.api.app import create_app

    app = create_app(settings)
    yield app
    await app.state.stores.close()


@pytest.fixture
async def api(api_app: Any, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app holding an unbound admin key: it may do everything."""
    transport = httpx.ASGITransport(app=api_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api",
                                 headers=await admin_headers(settings)) as client:
        yield client


@pytest.fixture
async def api_as(api_app: Any, settings: Settings
                 ) -> AsyncIterator[Callable[..., Awaitable[httpx.AsyncClient]]]:
    """Clients of the same app with other keys: ``await api_as("jobs:read", namespace="a")``
    (no scope: a client that sends no credential)."""
    async with contextlib.AsyncExitStack() as stack:

        async def client(*scopes: str, namespace: str | None = None) -> httpx.AsyncClient:
            headers = {}
            if scopes:
                key = await create_key(settings, *scopes, namespace=namespace)
                headers["Authorization"] = f"Bearer {key}"
            return await stack.enter_async_context(httpx.AsyncClient(
                transport=httpx.ASGITransport(app=api_app), base_url="http://api",
                headers=headers))

        yield client


class WorkerHandle:
    """A Worker running as a task of the test's event loop."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        from worker.pool import Worker

        self.worker = Worker(settings, registry)
        self.task = asyncio.create_task(self.worker.run())

    async def stop(self) -> None:
        self.worker.stop()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def start_worker(settings: Settings, registry: Registry
                       ) -> AsyncIterator[Any]:
    """Start in-process workers: ``await start_worker(concurrency=1)``."""
    handles: list[WorkerHandle] = []

    async def start(**overrides: Any) -> WorkerHandle:
        s = settings.model_copy(update={"worker_id": f"w{len(handles)}-{secrets.token_hex(3)}",
                                        **overrides})
        handle = WorkerHandle(s, registry)
        handles.append(handle)
        return handle

    yield start
    for h in handles:
        if not h.task.done():
            await h.stop()
        else:
            with contextlib.suppress(BaseException):
                h.task.result()


@pytest.fixture
async def spawn(settings: Settings, tmp_path: Path) -> AsyncIterator[Any]:
    """Start real OS processes (``python -m worker`` and friends) with the test's settings.
    Each one's output goes to a log file under tmp_path (``proc.log_path``)."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(*args: str, **overrides: Any) -> asyncio.subprocess.Process:
        env = settings_env(settings.model_copy(update=overrides),
                           worker_id="worker_id" in overrides)
        log_path = tmp_path / f"proc-{secrets.token_hex(4)}.log"
        with open(log_path, "wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *args, cwd=str(ROOT), env=env, stdout=log, stderr=log)
        proc.log_path = log_path  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()
