"""The OpenAPI document is the contract, and schemathesis checks the real app keeps it.

Every operation gets schema-valid (positive) and schema-breaking (negative) requests,
generated from the document the app serves, against the real app (PostgreSQL and Redis,
the test's own schema and prefix), with every schemathesis check on: no 5xx, each status
code and header declared, each body matching its schema, bad input refused, 405 with Allow
for undeclared methods, and so on. Bounded and derandomized: the same cases every run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.python.asgi import get_client

from shared.settings import Settings
from tests.conftest import admin_headers
from tests.support.job_api import PREFIX

EXAMPLES = 30  # per operation and generation mode: the whole run stays well under a minute

# Checks left out, each with where and why: (check, operation) -> reason.
CREATES = ("POST /api/v1/jobs", "POST /api/v1/jobs/batch")
LISTS = ("GET /api/v1/jobs", "GET /api/v1/dead-letters")
SCHEDULE_CHANGES = ("POST /api/v1/schedules", "PATCH /api/v1/schedules/{schedule_id}")
EXCLUDED: dict[tuple[str, str], str] = {
    **{("positive_data_acceptance", op): "a job's payload is checked by its job type's model, "
       "registered at run time and with rules JSON Schema cannot state (data_processing's "
       "`field`, required unless the operation is count): a schema-valid JobCreate may be "
       "a 422" for op in CREATES},
    **{("positive_data_acceptance", op): "`cursor` is opaque: only a next_cursor the API "
       "returned is one, and its format is deliberately not part of the contract"
       for op in LISTS},
    **{("positive_data_acceptance", op): "a schedule's cron is checked by cronsim (fields, "
       "ranges, an expression that never fires), its timezone against the IANA database "
       "and its job template by the job type's model, none of which JSON Schema can state"
       for op in SCHEDULE_CHANGES},
    ("positive_data_acceptance", "GET /api/v1/schedules"): "`cursor` is opaque, as above",
}


@pytest.fixture
def contract_app(settings: Settings) -> Iterator[FastAPI]:
    from functions.api.app import create_app

    yield create_app(settings)


@pytest.fixture
async def credentials(settings: Settings) -> dict[str, Any]:
    """The one place the fuzzer's credentials come from: an unbound admin API key, given to
    schemathesis as the document's bearer scheme (so its own auth checks still run)."""
    key = (await admin_headers(settings))["Authorization"].removeprefix("Bearer ")
    return {"auth": {"openapi": {"bearer": {"bearer": key}}}}


def checks_for(label: str) -> list[Any]:
    load_all_checks()
    return [check for name, check in zip(CHECKS.get_all_names(), CHECKS.get_all(), strict=True)
            if (name, label) not in EXCLUDED]


def fuzz(operation: Any, mode: GenerationMode, client: Any) -> None:
    checks = checks_for(operation.label)

    @hypothesis_settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                         database=None, phases=[Phase.explicit, Phase.generate],
                         suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case: Any) -> None:
        case.call_and_validate(session=client, checks=checks)

    try:
        call()
    except Unsatisfiable:
        # Nothing to break: an operation without parameters or body has no negative case.
        if mode is not GenerationMode.NEGATIVE:
            raise


def test_the_api_keeps_its_openapi_contract(contract_app: FastAPI,
                                            credentials: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_asgi(f"{PREFIX}/openapi.json", contract_app,
                                            config=SchemathesisConfig.from_dict(credentials))
    assert len(checks_for("")) >= 10  # really every check
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    # One client for the whole run: one lifespan, and the app's pools stay on one loop.
    with get_client(contract_app) as client:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz(operation, mode, client)


async def test_the_document_declares_replays_refusals_and_summary_lists(api: Any) -> None:
    ops = (await api.get(f"{PREFIX}/openapi.json")).json()["paths"]
    for path in ("/jobs", "/jobs/batch"):
        create = ops[f"{PREFIX}{path}"]["post"]["responses"]
        assert {"200", "201", "400", "403", "409", "413", "415", "422", "503"} <= set(create)
        assert "Idempotent-Replayed" in create["200"]["headers"]
    assert "Location" in ops[f"{PREFIX}/jobs"]["post"]["responses"]["201"]["headers"]
    redrive = ops[f"{PREFIX}/dead-letters/redrive"]["post"]["responses"]
    assert {"403", "415"} <= set(redrive)
    for path in ("/jobs", "/dead-letters"):
        listing = ops[f"{PREFIX}{path}"]["get"]
        fields = next(p for p in listing["parameters"] if p["name"] == "fields")
        assert fields["in"] == "query"
        # Reads are not refused cross-site (a 403 there is the auth scope's only).
        assert "another site" not in listing["responses"].get("403", {}).get("description", "")
    for method, path in (("post", "/jobs"), ("post", "/dead-letters/redrive"),
                         ("delete", "/jobs/{job_id}")):
        assert "another site" in ops[f"{PREFIX}{path}"][method]["responses"]["403"]["description"]
