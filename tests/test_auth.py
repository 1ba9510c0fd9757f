"""Access control: every route declares a scope and enforces it (401 without an accepted
credential, 403 without the scope), API keys are checked from a short in-process cache
and a revocation takes effect within it, and a namespaced key sees and touches only its
own jobs (404 for another namespace's, so ids do not leak)."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import httpx
import pytest

from functions.api.app import create_app
from shared.scopes import ADMIN, IMPLIES, READ, SCOPES, WRITE
from shared.settings import IamGrant, Settings
from shared.store.api_keys import ApiKeyStore
from tests.conftest import ROOT, create_key, make_settings, settings_env
from tests.support.api_checks import error_of, job_count
from tests.support.waits import eventually
from tests.test_lambda_api_handler import body_of, context, event

API = "/api/v1"
Client = Callable[..., Awaitable[httpx.AsyncClient]]


def _routes() -> list[tuple[str, str, Any]]:
    """Every (method, path, declared requirement) of the app, read from the app itself."""
    app = create_app(make_settings("unused", "unused"))
    return [(r.method, r.path, r.requirement) for r in app.state.routes]


ROUTES = _routes()
# /health for uptime checks; the docs pages and their assets describe the API, not its data;
# the console's shell pages and assets hold no data (its fragments need jobs:read).
CONSOLE_SHELLS = {f"{API}/console{page}" for page in (
    "", "/sign-in", "/jobs", "/jobs/{job_id}", "/dead-letters", "/schedules",
    "/assets/{name}")}
PUBLIC = {f"{API}/health", f"{API}/docs", f"{API}/redoc", f"{API}/docs-assets/{{name}}",
          *CONSOLE_SHELLS}


def _request_of(method: str, path: str) -> dict[str, Any]:
    filled = path.replace("{job_id}", str(uuid.uuid4()))
    body = ({"json": {"job_type": "noop", "payload": {}}} if filled.endswith("/jobs")
            else {"json": {"jobs": [{"job_type": "noop"}]}} if filled.endswith("/batch")
            else {})
    return {"method": method, "url": filled, **({} if method in ("GET", "DELETE") else body)}


def test_every_route_declares_a_scope_and_only_data_free_pages_are_public() -> None:
    assert len(ROUTES) >= 12
    public = {path for _, path, requirement in ROUTES if requirement.scope is None}
    assert public == PUBLIC
    assert {r.scope for _, _, r in ROUTES} == {None, READ, WRITE, ADMIN}


def test_an_app_with_an_undeclared_route_is_refused() -> None:
    from functions.api import jobs

    @jobs.router.get("/undeclared-for-test")
    async def undeclared() -> None:
        return None

    try:
        with pytest.raises(RuntimeError, match="undeclared-for-test"):
            create_app(make_settings("unused", "unused"))
    finally:
        jobs.router.routes.pop()


@pytest.mark.parametrize(("method", "path", "requirement"),
                         [r for r in ROUTES if r[1] not in PUBLIC],
                         ids=[f"{m} {p}" for m, p, _ in ROUTES if p not in PUBLIC])
async def test_route_is_401_without_a_credential_and_403_without_its_scope(
        api_as: Client, db: asyncpg.Pool, method: str, path: str, requirement: Any) -> None:
    request = _request_of(method, path)
    anonymous = await api_as()
    error = error_of(await anonymous.request(**request), 401)
    assert error["code"] == "unauthorized"
    assert (await anonymous.request(**request)).headers["www-authenticate"] == "Bearer"
    for scope in SCOPES:
        client = await api_as(scope)
        resp = await client.request(**request)
        if requirement.scope in IMPLIES[scope]:
            assert resp.status_code not in (401, 403), (scope, resp.text)
        else:
            error = error_of(resp, 403)
            assert error["code"] == "forbidden"
            assert requirement.scope in error["message"]
            assert resp.headers["www-authenticate"] == (
                f'Bearer error="insufficient_scope", scope="{requirement.scope}"')
    if method == "POST" and path.endswith(("/jobs", "/batch")):
        # Only the callers holding jobs:write (and admin) made jobs: one each.
        assert await job_count(db) == 2


async def test_health_and_the_docs_are_open(api_as: Client) -> None:
    anonymous = await api_as()
    assert (await anonymous.get(f"{API}/health")).status_code == 200
    for page in ("docs", "redoc", "openapi.json"):
        assert (await anonymous.get(f"{API}/{page}")).status_code == 200


async def test_openapi_documents_the_scheme_scopes_and_401_403(api_as: Client) -> None:
    schema = (await (await api_as()).get(f"{API}/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for method, path, requirement in ROUTES:
        op = schema["paths"].get(path, {}).get(method.lower())
        if op is None:  # not in the schema (the /jobs/ alias)
            continue
        if requirement.scope is None:
            assert "security" not in op and "401" not in op["responses"]
        else:
            assert op["security"] == [{"bearer": []}]
            assert {"401", "403"} <= set(op["responses"])
            assert f"`{requirement.scope}`" in op["description"]


@pytest.mark.parametrize("header", [
    "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "bearer-ajs_x", "Bearer not-a-key",
    "Bearer ajs_" + "A" * 43, ("Bearer ajs_" + "é" * 43).encode("latin-1"),
    "Bearer ajs_short"])
async def test_malformed_or_unknown_credentials_are_401_and_change_nothing(
        api_as: Client, db: asyncpg.Pool, header: str | bytes) -> None:
    client = await api_as()
    resp = await client.post(f"{API}/jobs", json={"job_type": "noop"},
                             headers={"Authorization": header})
    error = error_of(resp, 401)
    assert error["code"] == "unauthorized"
    assert error["details"][0]["loc"] == ["header", "Authorization"]
    assert resp.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert await job_count(db) == 0


async def test_scopes_imply_the_lower_ones(api_as: Client) -> None:
    writer = await api_as(WRITE)
    created = await writer.post(f"{API}/jobs", json={"job_type": "noop"})
    assert created.status_code == 201
    assert (await writer.get(created.headers["location"])).status_code == 200
    reader = await api_as(READ)
    assert (await reader.get(created.headers["location"])).status_code == 200
    assert error_of(await reader.delete(created.headers["location"]), 403)


# --- the key cache and revocation -----------------------------------------------------------

@pytest.fixture
async def app_with(settings: Settings) -> AsyncIterator[Callable[..., Any]]:
    apps: list[Any] = []

    def make(**overrides: Any) -> Any:
        apps.append(create_app(settings.model_copy(update=overrides)))
        return apps[-1]

    yield make
    for app in apps:
        await app.state.stores.close()


def _client(app: Any, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                             headers={"Authorization": f"Bearer {key}"})


async def test_a_cached_key_costs_no_query(app_with: Callable[..., Any],
                                           settings: Settings) -> None:
    """One lookup, then 50 requests served from the cache: no statement reaches PostgreSQL
    (job-types itself reads nothing from it)."""
    app = app_with(db_pool_max=1, db_pool_min=1, auth_cache_seconds=60)
    key = await create_key(settings, READ)
    statements: list[str] = []
    pool = await app.state.stores.pool()
    async with pool.acquire() as conn:
        conn.add_query_logger(lambda q: statements.append(q.query))
    async with _client(app, key) as client:
        for _ in range(51):
            assert (await client.get(f"{API}/job-types")).status_code == 200
    lookups = [q for q in statements if "api_keys" in q]
    assert len(lookups) == 1, statements


async def test_a_revoked_key_stops_working_within_the_cache_time(
        app_with: Callable[..., Any], settings: Settings, db: asyncpg.Pool) -> None:
    app = app_with(auth_cache_seconds=1.0)
    key = await create_key(settings, READ)
    async with _client(app, key) as client:
        assert (await client.get(f"{API}/jobs")).status_code == 200
        [row] = await ApiKeyStore(db).all()
        revoked_at = asyncio.get_running_loop().time()
        assert await ApiKeyStore(db).revoke(row["id"]) is not None

        async def refused() -> bool:
            return (await client.get(f"{API}/jobs")).status_code == 401

        await eventually(refused, timeout=3, what="the revoked key to be refused")
        took = asyncio.get_running_loop().time() - revoked_at
        assert took <= 1.5, f"refused only after {took:.2f} s"
        error = error_of(await client.get(f"{API}/jobs"), 401)
        assert error["message"] == "unknown or revoked API key"


async def test_last_use_is_written_at_most_once_a_minute(
        app_with: Callable[..., Any], settings: Settings, db: asyncpg.Pool) -> None:
    app = app_with(auth_cache_seconds=0)  # every request looks the key up
    key = await create_key(settings, READ)
    assert await db.fetchval("SELECT last_used_at FROM api_keys") is None
    async with _client(app, key) as client:
        assert (await client.get(f"{API}/jobs")).status_code == 200
        first = await db.fetchval("SELECT last_used_at FROM api_keys")
        assert first is not None
        for _ in range(5):
            assert (await client.get(f"{API}/jobs")).status_code == 200
        assert await db.fetchval("SELECT last_used_at FROM api_keys") == first
        # A minute later (moved back rather than waited for), the next use records itself.
        await db.execute("UPDATE api_keys SET last_used_at = last_used_at - interval '61 s'")
        assert (await client.get(f"{API}/jobs")).status_code == 200
        assert await db.fetchval("SELECT last_used_at FROM api_keys") > first


async def test_auth_disabled_is_an_explicit_setting(app_with: Callable[..., Any]) -> None:
    assert Settings().auth_disabled is False
    app = app_with(auth_disabled=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api") as client:
        assert (await client.post(f"{API}/jobs", json={"job_type": "noop"})).status_code == 201
        assert (await client.delete(f"{API}/dead-letters")).status_code == 200


# --- namespaces ---------------------------------------------------------------------------

async def _dead(db: asyncpg.Pool, job_id: str) -> None:
    """Through the legal path (QUEUED -> PROCESSING -> FAILED): the job is dead-lettered."""
    for status in ("PROCESSING", "FAILED"):
        await db.execute("UPDATE jobs SET status = $2, updated_at = now() WHERE id = $1",
                         uuid.UUID(job_id), status)


async def test_a_namespaced_key_sees_and_touches_only_its_own_jobs(
        api_as: Client, api: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    a, b = await api_as(ADMIN, namespace="tenant-a"), await api_as(ADMIN, namespace="tenant-b")
    made = await a.post(f"{API}/jobs", json={"job_type": "noop"})
    assert made.status_code == 201 and made.json()["namespace"] == "tenant-a"
    job_id = made.json()["id"]
    mine = (await b.post(f"{API}/jobs", json={"job_type": "noop"})).json()["id"]
    unbound = (await api.post(f"{API}/jobs", json={"job_type": "noop"})).json()
    assert unbound["namespace"] is None

    # By id: 404, the same answer as for an id that does not exist.
    for method, url in (("GET", f"{API}/jobs/{job_id}"), ("DELETE", f"{API}/jobs/{job_id}"),
                        ("POST", f"{API}/dead-letters/{job_id}/redrive")):
        error = error_of(await b.request(method, url), 404)
        assert error["message"] == f"job {job_id} not found"
    # Lists and stats: only its own.
    assert [j["id"] for j in (await b.get(f"{API}/jobs")).json()["items"]] == [mine]
    stats = (await b.get(f"{API}/jobs/stats")).json()
    assert sum(stats["by_status"].values()) == 1 and stats["queues"] == {}

    await _dead(db, job_id)
    assert (await b.get(f"{API}/dead-letters")).json()["items"] == []
    assert (await b.get(f"{API}/jobs/stats")).json()["dead_letter_size"] == 0
    assert (await b.post(f"{API}/dead-letters/redrive")).json() == {"count": 0}
    assert (await b.delete(f"{API}/dead-letters")).json() == {"count": 0}
    assert await db.fetchval("SELECT status FROM jobs WHERE id = $1",
                             uuid.UUID(job_id)) == "FAILED"

    # Its own namespace sees it; an unbound admin sees every namespace.
    assert [j["id"] for j in (await a.get(f"{API}/dead-letters")).json()["items"]] == [job_id]
    assert (await a.get(f"{API}/jobs/stats")).json()["dead_letter_size"] == 1
    assert {j["id"] for j in (await api.get(f"{API}/jobs")).json()["items"]} == {
        job_id, mine, unbound["id"]}
    assert (await api.get(f"{API}/jobs/{job_id}")).status_code == 200
    assert (await a.post(f"{API}/dead-letters/{job_id}/redrive")).status_code == 200
    assert (await a.delete(f"{API}/jobs/{job_id}")).status_code == 200


async def test_idempotency_keys_are_per_namespace(api_as: Client, db: asyncpg.Pool) -> None:
    a, b = await api_as(WRITE, namespace="tenant-a"), await api_as(WRITE, namespace="tenant-b")
    body, headers = {"job_type": "noop", "payload": {}}, {"Idempotency-Key": "same"}
    first = await a.post(f"{API}/jobs", json=body, headers=headers)
    other = await b.post(f"{API}/jobs", json=body, headers=headers)
    assert (first.status_code, other.status_code) == (201, 201)  # never the other's job
    assert first.json()["id"] != other.json()["id"]
    replay = await a.post(f"{API}/jobs", json=body, headers=headers)
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    assert await job_count(db) == 2


# --- the CLI -----------------------------------------------------------------------------

async def _cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "functions.api.keys", *args, cwd=str(ROOT),
        env=settings_env(settings), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_creates_lists_and_revokes_keys(
        app_with: Callable[..., Any], settings: Settings, db: asyncpg.Pool) -> None:
    code, out, err = await _cli(settings, "create", "--scopes", "jobs:write", "--name",
                                "billing", "--namespace", "billing")
    assert code == 0, err
    key = out.strip()
    assert key.startswith("ajs_") and len(key) > 40 and "shown only now" in err
    row = await db.fetchrow("SELECT * FROM api_keys")
    assert (row["name"], row["scopes"], row["namespace"]) == ("billing", ["jobs:write"],
                                                              "billing")
    assert key not in str(dict(row))  # only its digest is stored
    app = app_with(auth_cache_seconds=0)
    async with _client(app, key) as client:
        made = await client.post(f"{API}/jobs", json={"job_type": "noop"})
        assert made.status_code == 201 and made.json()["namespace"] == "billing"
        assert error_of(await client.delete(f"{API}/dead-letters"), 403)

        code, out, err = await _cli(settings, "list")
        assert code == 0, err
        assert row["prefix"] in out and "billing" in out and key not in out

        code, _, err = await _cli(settings, "revoke", row["prefix"])
        assert code == 0, err
        assert error_of(await client.get(f"{API}/jobs"), 401)
    code, out, _ = await _cli(settings, "list")
    assert row["prefix"] not in out
    code, out, _ = await _cli(settings, "list", "--all")
    assert row["prefix"] in out

    code, _, err = await _cli(settings, "revoke", row["prefix"])
    assert code == 1 and "no live key" in err
    code, _, err = await _cli(settings, "create", "--scopes", "root", "--name", "x")
    assert code == 2 and "unknown: root" in err
    code, _, err = await _cli(settings, "create", "--scopes", "admin", "--name", "x",
                              "--namespace", "Not A Namespace")
    assert code == 2
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 1


# --- behind API Gateway's IAM authorizer ----------------------------------------------------

class Gateway:
    """The app behind Mangum, as in a Lambda container: a thread with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="lambda-container")
        self.thread.submit(self._start, settings).result()

    def _start(self, settings: Settings) -> None:
        from mangum import Mangum

        asyncio.set_event_loop(asyncio.new_event_loop())
        self.app = create_app(settings, close_on_shutdown=False)
        self.handler = Mangum(self.app, lifespan="off")

    def invoke(self, ev: dict[str, Any]) -> dict[str, Any]:
        response: dict[str, Any] = self.thread.submit(self.handler, ev, context()).result()
        return response

    def close(self) -> None:
        def shutdown() -> None:
            loop = asyncio.get_event_loop()
            loop.run_until_complete(self.app.state.stores.close())
            loop.close()

        try:
            self.thread.submit(shutdown).result()
        finally:
            self.thread.shutdown()


@pytest.fixture
def gateway(settings: Settings) -> Iterator[Gateway]:
    grants = {"arn:aws:iam::123456789012:role/billing-app":
              IamGrant(scopes=["jobs:write"], namespace="billing"),
              "arn:aws:iam::123456789012:user/ops": IamGrant(scopes=["admin"])}
    box = Gateway(settings.model_copy(update={"auth_iam_principals": grants}))
    try:
        yield box
    finally:
        box.close()


def iam_event(name: str, user_arn: str, **replace: str) -> dict[str, Any]:
    ev = event(name, **replace)
    ev["headers"]["authorization"] = ("AWS4-HMAC-SHA256 Credential=AKIA.../execute-api/"
                                      "aws4_request, SignedHeaders=host, Signature=abc")
    ev["requestContext"]["authorizer"] = {"iam": {
        "accessKey": "ASIAEXAMPLE", "accountId": "123456789012", "callerId": "AROAEXAMPLE",
        "cognitoIdentity": None, "principalOrgId": None, "userArn": user_arn,
        "userId": "AROAEXAMPLE:session-1"}}
    return ev


async def test_iam_principals_get_the_scopes_and_namespace_they_are_mapped_to(
        gateway: Gateway) -> None:
    role = "arn:aws:sts::123456789012:assumed-role/billing-app/session-1"
    created = await asyncio.to_thread(gateway.invoke, iam_event("create_job", role))
    assert created["statusCode"] == 201, created
    job = body_of(created)
    assert job["namespace"] == "billing"

    purge = iam_event("list_jobs", role)
    purge["rawPath"] = purge["requestContext"]["http"]["path"] = f"{API}/dead-letters"
    purge["requestContext"]["http"]["method"] = "DELETE"
    refused = await asyncio.to_thread(gateway.invoke, purge)
    assert refused["statusCode"] == 403 and body_of(refused)["error"]["code"] == "forbidden"

    ops = "arn:aws:iam::123456789012:user/ops"
    got = await asyncio.to_thread(gateway.invoke, iam_event("get_job", ops, JOB_ID=job["id"]))
    assert got["statusCode"] == 200, got  # unbound admin: every namespace

    stranger = "arn:aws:sts::123456789012:assumed-role/other-app/session-1"
    denied = await asyncio.to_thread(gateway.invoke, iam_event("list_jobs", stranger))
    assert denied["statusCode"] == 403, denied
