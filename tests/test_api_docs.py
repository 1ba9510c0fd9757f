"""The API documents itself (Swagger UI, ReDoc, OpenAPI, served without a CDN) and every
error has one shape. tests/test_api_docs_offline.py opens the pages in a real browser."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urljoin

import httpx
from fastapi.routing import APIRoute

from shared.settings import Settings
from tests.support.api_checks import closed_port, error_of

API = "/api/v1"

ROUTES = {
    ("POST", "/api/v1/jobs"), ("GET", "/api/v1/jobs"), ("POST", "/api/v1/jobs/batch"),
    ("GET", "/api/v1/jobs/stats"), ("GET", "/api/v1/jobs/{job_id}"),
    ("DELETE", "/api/v1/jobs/{job_id}"), ("GET", "/api/v1/dead-letters"),
    ("DELETE", "/api/v1/dead-letters"), ("POST", "/api/v1/dead-letters/redrive"),
    ("POST", "/api/v1/dead-letters/{job_id}/redrive"), ("GET", "/api/v1/health"),
    ("GET", "/api/v1/job-types"),
    ("POST", "/api/v1/schedules"), ("GET", "/api/v1/schedules"),
    ("GET", "/api/v1/schedules/{schedule_id}"), ("PATCH", "/api/v1/schedules/{schedule_id}"),
    ("DELETE", "/api/v1/schedules/{schedule_id}"),
    ("GET", "/api/v1/jobs/activity"), ("GET", "/api/v1/workers"),
    ("GET", "/api/v1/dead-letters/groups"),
}


def documented(schema: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}


def references(html: str) -> list[str]:
    """Every URL a docs page loads: scripts, styles, icons and the schema."""
    return re.findall(r'(?:src|href|spec-url)="([^"]+)"|url: \'([^\']+)\'', html)


async def check_docs_pages(client: httpx.AsyncClient, prefix: str) -> None:
    """Both pages load everything from the API itself, by URLs relative to the page, so
    they also work under a stage prefix or base path the app never sees."""
    for page, marker in (("docs", "SwaggerUIBundle"), ("redoc", "<redoc ")):
        resp = await client.get(f"{prefix}/{page}")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/html")
        assert marker in resp.text
        assert "//" not in resp.text  # no CDN, no absolute URL of any kind
        urls = [a or b for a, b in references(resp.text)]
        assert any(u.startswith("openapi.json") for u in urls), urls
        assert len(urls) >= 2, urls  # the schema and at least the page's script
        for url in urls:
            assert not url.startswith("/"), url
            # Where a browser on a gateway stage would fetch it from...
            staged = urljoin(f"https://gw.example/stage{prefix}/{page}", url)
            assert staged.startswith(f"https://gw.example/stage{prefix}/"), staged
            # ...and where it lives here: each one is served, with no key and no CDN.
            asset = await client.get(urljoin(f"http://api{prefix}/{page}", url))
            assert asset.status_code == 200, url
            assert asset.headers["content-type"].split(";")[0] in (
                "application/json", "text/css", "text/javascript", "application/javascript",
                "image/png"), (url, asset.headers["content-type"])


async def test_swagger_ui_and_redoc_are_served_from_the_api(api):
    await check_docs_pages(api, API)
    css = await api.get(f"{API}/docs-assets/swagger-ui.css")
    assert "max-age" in css.headers["cache-control"]  # the URLs carry the version


async def test_docs_pages_follow_the_api_prefix(settings: Settings):
    from functions.api.app import create_app

    app = create_app(settings.model_copy(update={"api_prefix": "/edge/v2"}))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api") as client:
            await check_docs_pages(client, "/edge/v2")
            assert (await client.get(f"{API}/docs")).status_code == 404
    finally:
        await app.state.stores.close()


async def test_unknown_docs_asset_is_a_plain_404(api):
    """Only the pages' own files are served: a made-up name (or a path) reads nothing
    and is answered in the one error shape, without echoing the name back."""
    long_name = "x" * 4000 + ".js"
    for name in (long_name, "..%2fapp.py", "..%2F..%2Fpyproject.toml", "core.py"):
        body = error_of(await api.get(f"{API}/docs-assets/{name}"), 404)
        assert body["code"] == "not_found"
        assert "x" * 100 not in body["message"]
    missing = error_of(await api.get(f"{API}/docs-assets/swagger-ui.js"), 404)
    assert "swagger-ui-bundle.js" in missing["message"]


async def test_openapi_lists_every_route(api, settings: Settings):
    from functions.api import dead_letters, health, job_types, jobs, schedules, workers

    resp = await api.get(f"{API}/openapi.json")
    assert resp.status_code == 200
    schema = resp.json()
    assert schema["openapi"].startswith("3.")
    assert documented(schema) == ROUTES  # a new route belongs in ROUTES (and its tests)
    # Every public route the routers declare, read from the routers themselves.
    declared = {(m, settings.api_prefix + r.path_format)
                for module in (jobs, dead_letters, health, job_types, schedules, workers)
                for r in module.router.routes
                if isinstance(r, APIRoute) and r.include_in_schema for m in r.methods}
    assert declared == ROUTES


async def test_openapi_documents_errors_in_the_shape_clients_get(api):
    schema = (await api.get(f"{API}/openapi.json")).json()
    ops = schema["paths"]
    ref = "#/components/schemas/ErrorResponse"

    def error_ref(path: str, method: str, status: str) -> str:
        body = ops[path][method]["responses"][status]["content"]["application/json"]
        return str(body["schema"]["$ref"])

    assert error_ref("/api/v1/jobs", "post", "409") == ref
    assert error_ref("/api/v1/jobs", "post", "413") == ref
    assert error_ref("/api/v1/jobs/{job_id}", "get", "404") == ref
    assert error_ref("/api/v1/health", "get", "503") == ref
    for path, methods in ops.items():
        for method, op in methods.items():
            if "422" in op["responses"]:
                assert error_ref(path, method, "422") == ref, (method, path)
    assert "HTTPValidationError" not in json.dumps(schema)
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(schema)))
    assert refs <= set(schema["components"]["schemas"])  # every reference resolves
    # The create body's example and the Idempotency-Key header are documented.
    create = ops["/api/v1/jobs"]["post"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header"
               for p in create["parameters"])
    assert schema["components"]["schemas"]["JobCreate"]["examples"][0]["job_type"] == "email"


async def test_every_error_has_one_shape(api, settings: Settings):
    not_found = error_of(await api.get(f"{API}/no-such-route"), 404)
    assert not_found["code"] == "not_found"
    not_allowed = await api.put(f"{API}/jobs")
    assert error_of(not_allowed, 405)["code"] == "method_not_allowed"
    # Every method of the path, though GET and POST are two routes.
    assert not_allowed.headers["allow"] == "GET, POST"
    too_large = await api.post(f"{API}/jobs", content=b"x" * (257 * 1024),
                               headers={"content-type": "application/json"})
    assert error_of(too_large, 413)["code"] == "payload_too_large"
    invalid = await api.post(f"{API}/jobs", json={"job_type": "noop", "priority": 0})
    assert error_of(invalid, 422)["code"] == "validation_error"
    job = (await api.post(f"{API}/jobs", json={"job_type": "noop"})).json()
    assert (await api.delete(f"{API}/jobs/{job['id']}")).status_code == 200
    assert error_of(await api.delete(f"{API}/jobs/{job['id']}"), 409)["code"] == "conflict"
    unknown = error_of(await api.get(f"{API}/jobs/{'0' * 8}-0000-0000-0000-{'0' * 12}"), 404)
    assert unknown["code"] == "not_found"

    from functions.api.app import create_app

    app = create_app(settings.model_copy(update={
        "redis_url": f"redis://127.0.0.1:{closed_port()}/0", "health_timeout": 0.5}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api") as client:
        assert error_of(await client.get(f"{API}/health"), 503)["code"] == "unavailable"
    await app.state.stores.close()
