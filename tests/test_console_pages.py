"""The console without a browser: the shell pages are public and hold no data, each data
fragment needs its scope like any API route, a key bound to a namespace sees only its
own jobs, payload secrets stay redacted, and a page weighs under 100 KB before data."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from functions.api.console.pages import ASSET_FILES
from shared.job_types.webhook import signing as webhook_signing
from shared.settings import Settings
from tests.support import job_api

PREFIX = job_api.PREFIX
CONSOLE = f"{PREFIX}/console"
SHELLS = ["", "/sign-in", "/jobs", "/jobs/5d0c9b8e-4a57-4a5e-9c2a-7a2b9a1f0c11",
          "/dead-letters", "/schedules"]
FRAGMENTS = ["whoami", "overview", "jobs", "jobs/5d0c9b8e-4a57-4a5e-9c2a-7a2b9a1f0c11",
             "dead-letters", "schedules"]
PAGE_BUDGET = 100 * 1024
WEBHOOK_PASSWORD = "pw-console-8c1e"
WEBHOOK_TOKEN = "tok-console-3f9a"

ApiAs = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Webhook payloads with credentials need a payload key (they are stored sealed).
    return settings.model_copy(update={"webhook_secret": webhook_signing.new_secret(),
                                       "webhook_allowlist": ["127.0.0.1/32"],
                                       "payload_key": Fernet.generate_key().decode()})


def _assets_of(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]*assets/[^"]+)"', html)


async def test_shell_pages_are_public_and_hold_no_data(
        api: httpx.AsyncClient, api_as: ApiAs) -> None:
    job_id = await job_api.create(api, "noop", {"tag": "visible-only-in-fragments"})
    anonymous = await api_as()
    for shell in SHELLS:
        page = await anonymous.get(CONSOLE + shell)
        assert page.status_code == 200, (shell, page.text)
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert job_id not in page.text and "visible-only-in-fragments" not in page.text
        assert "noop" not in page.text
        for asset in _assets_of(page.text):  # relative: they work under any stage prefix
            assert not asset.startswith(("/", "http")), asset
    # The assets are public too, and only the two files are served.
    for name in ASSET_FILES:
        assert (await anonymous.get(f"{CONSOLE}/assets/{name}")).status_code == 200
    assert (await anonymous.get(f"{CONSOLE}/assets/..%2Fpages.py")).status_code == 404
    assert (await anonymous.get(f"{CONSOLE}/assets/pages.py")).status_code == 404


async def test_fragments_need_a_credential_and_the_read_scope(
        api: httpx.AsyncClient, api_as: ApiAs, api_app: Any) -> None:
    anonymous = await api_as()
    for name in FRAGMENTS:
        refused = await anonymous.get(f"{CONSOLE}/fragments/{name}")
        assert refused.status_code == 401, (name, refused.text)
        assert refused.headers["www-authenticate"].startswith("Bearer")
    bogus = await anonymous.get(f"{CONSOLE}/fragments/overview",
                                headers={"Authorization": "Bearer ajs_not_a_real_key"})
    assert bogus.status_code == 401
    # Every fragment route declares jobs:read (the app refuses a route that declares none).
    scopes = {r.path: r.requirement.scope for r in api_app.state.routes
              if r.path.startswith(f"{CONSOLE}/fragments") and r.requirement}
    assert set(scopes.values()) == {"jobs:read"} and len(scopes) == 6, scopes
    reader = await api_as("jobs:read")
    for name in FRAGMENTS[:3] + FRAGMENTS[4:]:
        shown = await reader.get(f"{CONSOLE}/fragments/{name}")
        assert shown.status_code == 200, (name, shown.text)
        assert shown.headers["cache-control"] == "no-store"


async def test_a_read_only_key_cannot_act(api: httpx.AsyncClient, api_as: ApiAs) -> None:
    """The console's actions are JSON API calls: a jobs:read key gets the API's 403,
    which names the scope it lacks (the console shows it)."""
    reader = await api_as("jobs:read")
    purge = await reader.delete(f"{PREFIX}/dead-letters")
    assert purge.status_code == 403
    assert purge.json()["error"]["details"][0] == {
        "loc": ["header", "Authorization"], "msg": "needs scope admin",
        "type": "insufficient_scope"}
    whoami = await reader.get(f"{CONSOLE}/fragments/whoami")
    assert 'data-scopes="jobs:read"' in whoami.text


async def test_a_namespace_bound_key_sees_only_its_jobs(
        api: httpx.AsyncClient, api_as: ApiAs) -> None:
    acme = await api_as("jobs:write", namespace="acme")
    globex = await api_as("jobs:write", namespace="globex")
    ours = await job_api.create(acme, "noop", {"tag": "acme-job"})
    theirs = await job_api.create(globex, "noop", {"tag": "globex-job"})
    listed = await acme.get(f"{CONSOLE}/fragments/jobs")
    assert ours in listed.text and theirs not in listed.text
    assert "No job matches" in (await acme.get(f"{CONSOLE}/fragments/jobs",
                                                params={"id": theirs})).text
    assert (await acme.get(f"{CONSOLE}/fragments/jobs/{theirs}")).status_code == 404
    assert "acme-job" in (await acme.get(f"{CONSOLE}/fragments/jobs/{ours}")).text
    overview = await acme.get(f"{CONSOLE}/fragments/overview")
    # One noop job in acme's counts; the unbound admin sees both tenants'.
    assert re.search(r"noop</a></th>\s*<td class=\"num\">0</td>\s*<td class=\"num\">1<",
                     overview.text), overview.text
    everyone = await api.get(f"{CONSOLE}/fragments/jobs")
    assert ours in everyone.text and theirs in everyone.text


async def test_job_fragment_redacts_secrets_as_the_api_does(api: httpx.AsyncClient) -> None:
    payload = {"url": f"http://alice:{WEBHOOK_PASSWORD}@127.0.0.1:9/hook",
               "headers": {"Authorization": f"Bearer {WEBHOOK_TOKEN}", "X-Tenant": "acme"}}
    job_id = await job_api.create(api, "webhook", payload, scheduled_at="2035-01-01T00:00:00Z")
    shown = await api.get(f"{CONSOLE}/fragments/jobs/{job_id}")
    assert shown.status_code == 200
    assert "acme" in shown.text and "127.0.0.1:9/hook" in shown.text
    assert WEBHOOK_PASSWORD not in shown.text and WEBHOOK_TOKEN not in shown.text
    assert "Cancel job" in shown.text and "data-final" not in shown.text


async def test_job_fragment_escapes_what_users_wrote(api: httpx.AsyncClient) -> None:
    job_id = await job_api.create(api, "noop", {"tag": "<script>alert(1)</script>"})
    shown = await api.get(f"{CONSOLE}/fragments/jobs/{job_id}")
    assert "<script>" not in shown.text and "&lt;script&gt;" in shown.text


async def test_jobs_fragment_filters_and_pages(api: httpx.AsyncClient) -> None:
    records = [await job_api.create(api, "record", {}) for _ in range(3)]
    noop = await job_api.create(api, "noop", {})
    only = await api.get(f"{CONSOLE}/fragments/jobs", params={"job_type": "record"})
    assert all(r in only.text for r in records) and noop not in only.text
    found = await api.get(f"{CONSOLE}/fragments/jobs", params={"id": noop})
    assert noop in found.text and records[0] not in found.text
    prefix = await api.get(f"{CONSOLE}/fragments/jobs", params={"id": noop[:8]})
    assert noop in prefix.text and records[0] not in prefix.text
    bad = await api.get(f"{CONSOLE}/fragments/jobs", params={"id": "nope"})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["loc"] == [
        "query", "id"]
    refused = await api.get(f"{CONSOLE}/fragments/jobs", params={"status": "SLEEPING"})
    assert refused.status_code == 422


async def test_a_page_weighs_under_100_kb_before_data(api_as: ApiAs) -> None:
    """The shell's HTML, CSS and JS together: what a browser loads before any data."""
    anonymous = await api_as()
    for shell in SHELLS:
        page = await anonymous.get(CONSOLE + shell)
        total = len(page.content)
        for asset in _assets_of(page.text):
            url = httpx.URL(f"http://api{CONSOLE}{shell}").join(asset)
            fetched = await anonymous.get(url)
            assert fetched.status_code == 200, url
            total += len(fetched.content)
        assert total < PAGE_BUDGET, (shell, total)


def test_the_gateway_opens_exactly_the_public_console_routes(api_app: Any) -> None:
    """template.yaml lets API Gateway serve the shell pages and assets without its
    authorizer (a browser loads them before it has a credential), and nothing else under
    the console: the fragments stay behind the guarded proxy route."""
    from tests.test_deploy_config import _template

    template = _template()
    body = template["Resources"]["HttpApi"]["Properties"]["DefinitionBody"]
    open_paths = {path for path, ops in body["paths"].items()
                  if path.startswith(CONSOLE) and ops["get"]["security"] == []}
    public = {r.path.replace("{job_id:uuid}", "{job_id}") for r in api_app.state.routes
              if r.path.startswith(CONSOLE) and r.requirement.scope is None}
    assert open_paths == public, (open_paths ^ public)
    events = {e["Properties"]["Path"] for e in
              template["Resources"]["ApiFunction"]["Properties"]["Events"].values()}
    assert public <= events
    assert not any("fragments" in p for p in open_paths | events)


async def test_jobs_fragment_filters_by_namespace_and_creation_time(
        api: httpx.AsyncClient, api_as: ApiAs) -> None:
    acme = await api_as("jobs:write", namespace="acme")
    ours = await job_api.create(acme, "noop", {})
    unbound = await job_api.create(api, "noop", {})
    only_acme = await api.get(f"{CONSOLE}/fragments/jobs", params={"namespace": "acme"})
    assert ours in only_acme.text and unbound not in only_acme.text
    # A bound key cannot widen its view by naming another namespace.
    other = await acme.get(f"{CONSOLE}/fragments/jobs", params={"namespace": "globex"})
    assert ours in other.text
    future = await api.get(f"{CONSOLE}/fragments/jobs",
                           params={"created_after": "2035-01-01T00:00"})
    assert "No job matches" in future.text
    past = await api.get(f"{CONSOLE}/fragments/jobs",
                         params={"created_before": "2035-01-01T00:00",
                                 "created_after": "2020-01-01T00:00:00+00:00"})
    assert ours in past.text and unbound in past.text
    bad = await api.get(f"{CONSOLE}/fragments/jobs", params={"created_after": "yesterday"})
    assert bad.status_code == 422 and "created_after" in bad.text
