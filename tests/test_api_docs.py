"""The API documents itself (Swagger UI, ReDoc, OpenAPI) and every error has one shape."""

from __future__ import annotations

import json
import re
from typing import Any

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
}


def documented(schema: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}


async def test_swagger_ui_and_redoc_are_served(api):
    swagger = await api.get(f"{API}/docs")
    assert swagger.status_code == 200
    assert swagger.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in swagger.text and f"{API}/openapi.json" in swagger.text
    redoc = await api.get(f"{API}/redoc")
    assert redoc.status_code == 200
    assert "redoc" in redoc.text.lower() and f"{API}/openapi.json" in redoc.text


async def test_openapi_lists_every_route(api, settings: Settings):
    from functions.api import dead_letters, health, job_types, jobs

    resp = await api.get(f"{API}/openapi.json")
    assert resp.status_code == 200
    schema = resp.json()
    assert schema["openapi"].startswith("3.")
    assert documented(schema) == ROUTES  # a new route belongs in ROUTES (and its tests)
    # Every public route the routers declare, read from the routers themselves.
    declared = {(m, settings.api_prefix + r.path_format)
                for module in (jobs, dead_letters, health, job_types)
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
