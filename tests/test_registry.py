"""The job type registry: definitions, the job-types listing, and a user's own module
loaded through configuration (AJS_JOB_MODULES) in a real worker process."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from shared.api_schemas import JobCreate
from shared.queue.redis_queue import TypeLimit
from shared.registry import JobType, Registry, load
from shared.settings import Settings
from tests.support import job_api
from tests.support.registry_scope import scoped_registrations

EXAMPLE = "examples.text_stats"


class Empty(BaseModel):
    pass


async def _nothing(payload: Any, ctx: Any) -> None:
    return None


@pytest.fixture(autouse=True)
def _example_only_here() -> Iterator[None]:
    """The example module's type leaves the registry with the test that loaded it."""
    with scoped_registrations():
        yield


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The conftest's settings plus the example module, as a deployment would name it."""
    return settings.model_copy(update={"job_modules": [*settings.job_modules, EXAMPLE]})


@pytest.mark.parametrize(("options", "message"), [
    ({"priority": 0}, "priority must be 1..10"),
    ({"rate_limit": (0, 1.0)}, "rate_limit"),
    ({"rate_limit": (5, 0.0)}, "rate_limit"),
    ({"concurrency_limit": 0}, "concurrency_limit"),
    ({"name": "a:b"}, "must be non-empty"),
    ({"name": ""}, "must be non-empty"),
])
def test_registry_refuses_bad_definitions(options: dict[str, Any], message: str) -> None:
    fields = {"name": "x", "payload_model": Empty, "handler": _nothing, **options}
    with pytest.raises(ValueError, match=message):
        Registry().add(JobType(**fields))


def test_limits_reach_the_claim_script_in_its_units() -> None:
    reg = Registry()
    reg.add(JobType("limited", Empty, _nothing, rate_limit=(5, 2.5), concurrency_limit=3,
                    queue="bulk"))
    reg.add(JobType("free", Empty, _nothing))
    assert reg.limits("bulk") == [TypeLimit("limited", 3, 5, 2500)]
    assert reg.limits() == [TypeLimit("free", 0, 0, 1000), TypeLimit("limited", 3, 5, 2500)]


async def test_job_types_lists_every_type_with_schema_and_limits(api: Any) -> None:
    r = await api.get("/api/v1/job-types")
    assert r.status_code == 200
    types = {t["name"]: t for t in r.json()}
    assert {"email", "data_processing", "report_generation", "image_processing", "webhook",
            "text_stats", "noop"} <= set(types)

    email = types["email"]
    assert email["rate_limit"] == {"limit": 10, "per_seconds": 1.0}
    assert set(email["payload_schema"]["required"]) == {"to", "subject", "body"}
    assert {"html", "cc", "bcc", "reply_to"} <= set(email["payload_schema"]["properties"])

    stats = types["text_stats"]
    assert stats["description"] == "Count the words of a text and name the commonest ones."
    assert (stats["priority"], stats["timeout_seconds"], stats["max_retries"]) == (7, 30, 2)
    assert stats["rate_limit"] == {"limit": 100, "per_seconds": 1.0}
    assert stats["concurrency_limit"] == 4
    assert stats["payload_schema"]["properties"]["top"]["maximum"] == 100

    dp = types["data_processing"]["payload_schema"]
    assert {"source", "format", "operations", "destination"} <= set(dp["properties"])
    assert types["data_processing"]["concurrency_limit"] == 4


async def test_user_module_named_in_config_runs_in_a_worker_process(api: Any, spawn: Any
                                                                    ) -> None:
    """The example module is imported by a real ``python -m worker`` because
    AJS_JOB_MODULES names it; its handler's result, permanent error and 422 all hold."""
    ok = await job_api.create(api, "text_stats", {"text": "to be or not to be", "top": 2})
    empty = await job_api.create(api, "text_stats", {"text": " ... "})
    assert await job_api.refused(api, "text_stats", {"text": "x", "top": 0}) == [
        ["body", "payload", "top"]]
    assert await job_api.refused(api, "text_stats", {}) == [["body", "payload", "text"]]

    await spawn("-m", "worker")
    done = await job_api.finished(api, ok, timeout=30)
    assert done["status"] == "COMPLETED"
    assert done["result"] == {"words": 6, "distinct": 4, "top": [["to", 2], ["be", 2]]}
    assert done["priority"] == 7

    dead = await job_api.finished(api, empty, timeout=30)
    assert dead["status"] == "FAILED"
    assert dead["attempts"] == 1  # permanent: no retry
    assert "the text has no words" in dead["last_error"]


def test_documented_curl_examples_are_valid_jobs() -> None:
    """Every ``curl ... -d '{...}'`` job in the docs passes the API's validation, so the
    examples cannot drift from the payload models."""
    root = Path(__file__).resolve().parent.parent
    texts = [(root / "README.md").read_text()]
    reg = load([EXAMPLE])
    seen = set()
    for body in re.findall(r"curl (?:[^\n]|\\\n)*?-d '(\{.*?\})'", "\n".join(texts), re.DOTALL):
        spec = JobCreate.model_validate(json.loads(body))
        jt = reg.get(spec.job_type)
        assert jt is not None, spec.job_type
        jt.parse(spec.payload)
        seen.add(spec.job_type)
    assert {"email", "data_processing", "report_generation", "image_processing", "webhook",
            "text_stats"} <= seen
