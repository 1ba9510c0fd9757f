"""What ``sam build`` makes is what Lambda runs: each function's artifact holds
functions/, shared/ and every dependency, and answers the events SAM generates in a fresh
Python process that has only the artifact (and the standard library) on its path.

The SAM CLI lives in its own virtual environment (its pins would fight the app's):
``$AJS_SAM_VENV`` or ``~/.cache/ajs-sam/venv``, which ``.ci/sam-check.sh`` creates. Without
it these tests skip locally, and fail in CI. ``AJS_SAM_BUILD_DIR`` names a finished build
(the CI script's) to check instead of building again (a build takes one to two minutes).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.api_schemas import JobCreate
from shared.connections import Stores
from shared.core.service import JobService
from shared.settings import Settings
from tests.conftest import ROOT, settings_env

# Without AJS_SAM_BUILD_DIR the first test waits for `sam build` (one to two minutes).
pytestmark = pytest.mark.timeout(600)

RUNNER = ROOT / "tests" / "support" / "built_invoke.py"
FUNCTIONS = ("ApiFunction", "SchedulerFunction")


def _sam() -> Path:
    venv = Path(os.environ.get("AJS_SAM_VENV") or Path.home() / ".cache/ajs-sam/venv")
    sam = venv / "bin" / "sam"
    if not sam.exists():
        message = f"SAM CLI not found at {sam} (bash .ci/sam-check.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return sam


def _sam_env() -> dict[str, str]:
    return {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def sam() -> Path:
    return _sam()


@pytest.fixture(scope="session")
def build_dir(sam: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("AJS_SAM_BUILD_DIR")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("sam") / "build"
    subprocess.run([str(sam), "build", "--template", "template.yaml", "--build-dir", str(out)],
                   cwd=ROOT, env=_sam_env(), check=True, capture_output=True, timeout=900)
    return out


@pytest.fixture(scope="session")
def handlers(build_dir: Path) -> dict[str, tuple[Path, str]]:
    """Artifact directory and handler of each function, read from the built template."""
    template = yaml.safe_load((build_dir / "template.yaml").read_text())
    out = {}
    for name in FUNCTIONS:
        props = template["Resources"][name]["Properties"]
        out[name] = (build_dir / props["CodeUri"], props["Handler"])
    return out


def _generate(sam: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run([str(sam), "local", "generate-event", *args], cwd=ROOT,
                          env=_sam_env(), check=True, capture_output=True, text=True,
                          timeout=120)
    event: dict[str, Any] = json.loads(done.stdout)
    return event


@pytest.fixture(scope="session")
def http_event(sam: Path) -> dict[str, Any]:
    return _generate(sam, "apigateway", "http-api-proxy")


@pytest.fixture(scope="session")
def scheduled_event(sam: Path) -> dict[str, Any]:
    return _generate(sam, "cloudwatch", "scheduled-event")


def _http(template: dict[str, Any], method: str, path: str, query: str = "",
          body: Any = None) -> dict[str, Any]:
    """SAM's HTTP API event, adapted to one of our routes (what --method/--path/--body
    would do, plus a JSON content type and our own query string)."""
    event = copy.deepcopy(template)
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = method
    event["rawQueryString"] = query
    event["queryStringParameters"] = dict(
        part.split("=", 1) for part in query.split("&")) if query else None
    event["headers"] = {**event["headers"], "content-type": "application/json"}
    # What the JWT authorizer passes for a token with our scope (SAM's sample has none).
    event["requestContext"]["authorizer"]["jwt"] = {
        "claims": {"sub": "sam-tests", "scope": "jobs:write"}, "scopes": ["jobs:write"]}
    event.pop("pathParameters", None)
    event.pop("cookies", None)
    if body is None:
        event.pop("body", None)
        event["isBase64Encoded"] = False
    else:
        event["body"] = base64.b64encode(json.dumps(body).encode()).decode()
        event["isBase64Encoded"] = True
    return event


async def _invoke_built(artifact: Path, handler: str, events: list[dict[str, Any]],
                        settings: Settings, tmp_path: Path) -> list[Any]:
    paths = []
    for i, event in enumerate(events):
        path = tmp_path / f"event{i}.json"
        path.write_text(json.dumps(event))
        paths.append(str(path))
    env = settings_env(settings)
    env.pop("PYTHONPATH", None)
    env.update({"POWERTOOLS_TRACE_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", str(RUNNER), str(artifact), handler, *paths,
        cwd=str(tmp_path), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 0, text
    lines = text.splitlines()
    foreign = [json.loads(x[8:]) for x in lines if x.startswith("FOREIGN ")]
    assert foreign == [{}], f"modules loaded from outside the artifact: {foreign}"
    return [json.loads(x[7:]) for x in lines if x.startswith("RESULT ")]


def test_each_artifact_holds_our_code_and_its_dependencies(
        handlers: dict[str, tuple[Path, str]]) -> None:
    for artifact, handler in handlers.values():
        module = handler.rpartition(".")[0]
        assert (artifact / (module.replace(".", "/") + ".py")).is_file(), handler
        for path in ("shared/settings.py", "shared/queue/lua/claim.lua", "shared/job_types",
                     "asyncpg", "redis", "hiredis", "fastapi", "mangum", "pydantic_core", "jinja2",
                     "aws_lambda_powertools", "boto3"):
            assert (artifact / path).exists(), f"{artifact.name} lacks {path}"


def test_requirements_txt_is_the_lock_exported() -> None:
    """requirements.txt (what sam build installs) is generated; its header holds the
    command, and running it again must give the same file."""
    text = (ROOT / "requirements.txt").read_text()
    command = text.splitlines()[1].lstrip("# ").split()
    assert command[:2] == ["uv", "export"], command
    if "-o" in command:
        i = command.index("-o")
        del command[i:i + 2]
    uv = os.environ.get("UV") or shutil.which("uv") or pytest.fail("uv is not on PATH")
    fresh = subprocess.run([uv, *command[1:], "--quiet"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert [line for line in fresh.splitlines() if not line.startswith("#")] == body


async def test_built_api_function_answers_http_api_events(
        handlers: dict[str, tuple[Path, str]], http_event: dict[str, Any],
        settings: Settings, service: JobService, store: Any, tmp_path: Path) -> None:
    existing, _ = await service.create(JobCreate(job_type="noop", payload={"tag": "a"}))
    artifact, handler = handlers["ApiFunction"]
    events = [
        _http(http_event, "POST", "/api/v1/jobs",
              body={"job_type": "noop", "payload": {"tag": "b"}, "priority": 3}),
        _http(http_event, "GET", f"/api/v1/jobs/{existing['id']}"),
        _http(http_event, "GET", "/api/v1/jobs", query="job_type=noop&limit=10"),
        _http(http_event, "GET", "/api/v1/health"),
    ]
    created, got, listed, health = await _invoke_built(artifact, handler, events, settings,
                                                       tmp_path)
    assert created["statusCode"] == 201, created
    new_id = json.loads(created["body"])["id"]
    assert (await store.get(new_id))["priority"] == 3
    assert got["statusCode"] == 200 and json.loads(got["body"])["id"] == str(existing["id"])
    assert listed["statusCode"] == 200
    assert [j["id"] for j in json.loads(listed["body"])["items"]] == [
        new_id, str(existing["id"])]
    assert health["statusCode"] == 200, health


async def test_built_api_function_serves_the_docs_pages_and_their_assets(
        handlers: dict[str, tuple[Path, str]], http_event: dict[str, Any],
        settings: Settings, tmp_path: Path) -> None:
    """Swagger UI and ReDoc load their scripts from the function itself (no CDN), so the
    assets must be in the package and fit in a Lambda response (6 MB)."""
    artifact, handler = handlers["ApiFunction"]
    paths = ["/api/v1/docs", "/api/v1/redoc", "/api/v1/docs-assets/swagger-ui-bundle.js",
             "/api/v1/docs-assets/swagger-ui.css", "/api/v1/docs-assets/redoc.standalone.js"]
    results = await _invoke_built(artifact, handler, [_http(http_event, "GET", p) for p in paths],
                                  settings, tmp_path)
    bodies = {}
    for path, result in zip(paths, results, strict=True):
        assert result["statusCode"] == 200, (path, result.get("body", "")[:300])
        assert len(json.dumps(result)) < 6_000_000, path
        body = result["body"]
        bodies[path] = base64.b64decode(body).decode() if result["isBase64Encoded"] else body
    assert "docs-assets/swagger-ui-bundle.js" in bodies["/api/v1/docs"]
    assert "docs-assets/redoc.standalone.js" in bodies["/api/v1/redoc"]
    assert "SwaggerUIBundle" in bodies["/api/v1/docs-assets/swagger-ui-bundle.js"]
    assert ".swagger-ui" in bodies["/api/v1/docs-assets/swagger-ui.css"]
    assert "Redoc" in bodies["/api/v1/docs-assets/redoc.standalone.js"]


async def test_built_api_function_serves_the_console(
        handlers: dict[str, tuple[Path, str]], http_event: dict[str, Any],
        settings: Settings, service: JobService, tmp_path: Path) -> None:
    """The console's templates and assets are package data beside its code: the
    artifact must hold them, or the page is a 500 on Lambda only."""
    await service.create(JobCreate(job_type="noop", payload={"tag": "console"}))
    artifact, handler = handlers["ApiFunction"]
    assert (artifact / "functions/api/console/templates/layout.html").is_file()
    shell = _http(http_event, "GET", "/api/v1/console")
    del shell["requestContext"]["authorizer"]  # a public route: no authorizer ran
    events = [shell,
              _http(http_event, "GET", "/api/v1/console/assets/console.js"),
              _http(http_event, "GET", "/api/v1/console/fragments/overview")]
    page, script, fragment = await _invoke_built(artifact, handler, events, settings,
                                                 tmp_path)
    assert page["statusCode"] == 200, page
    assert page["headers"]["content-type"].startswith("text/html")
    assert 'src="console/assets/console.js?v=' in page["body"]
    assert script["statusCode"] == 200, script
    body = script["body"]
    text = base64.b64decode(body).decode() if script["isBase64Encoded"] else body
    assert "sessionStorage" in text
    assert fragment["statusCode"] == 200, fragment
    assert "Jobs by state" in fragment["body"] and "noop" in fragment["body"]


async def test_built_scheduler_function_promotes_due_jobs(
        handlers: dict[str, tuple[Path, str]], scheduled_event: dict[str, Any],
        settings: Settings, registry: Any, stores: Stores, tmp_path: Path) -> None:
    service = JobService(Stores(settings.model_copy(
        update={"schedule_lookahead_seconds": 0})), registry)
    job, _ = await service.create(JobCreate(
        job_type="noop", payload={}, scheduled_at=datetime.now(UTC) + timedelta(seconds=30)))
    await service.stores.close()
    assert job["status"] == "PENDING"

    artifact, handler = handlers["SchedulerFunction"]
    [summary] = await _invoke_built(artifact, handler, [scheduled_event], settings, tmp_path)
    assert summary["skipped"] is False and summary["promoted"] == 1
    assert summary["event_id"] == scheduled_event["id"]
    assert (await (await stores.store()).get(job["id"]))["status"] == "QUEUED"
    assert await stores.redis.zscore(stores.queue().k_delayed, str(job["id"])) is not None
