"""What a worker imports at start: the job types' heavy libraries only when one of their
jobs runs, and nothing the worker never uses.

A worker's resident memory is mostly the modules it imports (bench/RESULTS.md, "Issue 12");
each of these would cost every worker megabytes whether or not it ever runs that type.
Checked in a fresh interpreter that imports what ``python -m worker`` imports and loads
the registry (the five built-in types), as a deployment starts it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What a type needs to run a job, not to validate its payload, and what only Lambda uses.
NOT_AT_START = [
    "PIL",  # image_processing
    "boto3", "botocore", "aioboto3", "aiobotocore",  # S3 and SES
    "jinja2",  # report_generation
    "httpx",  # webhook
    "aiosmtplib",  # email over SMTP
    "email_validator",  # email addresses: checked by the first email payload validated
    "cryptography.fernet",  # sealed webhook credentials
    "aws_lambda_powertools", "jmespath",  # Lambda's logger; the worker logs with logging
    "fastapi", "starlette", "mangum", "uvicorn",  # the API
    "pydantic_settings", "dotenv",  # settings are read by shared.settings itself: 1 MB
]

PROBE = """
import json, sys
import worker.__main__, worker.pool, worker.reporting
from shared.registry import load
from shared.settings import Settings
registry = load(Settings().job_modules)
built = sorted(t.name for t in registry.all() if t.payload_model.__pydantic_complete__)
print(json.dumps({"types": sorted(registry.names()), "modules": sorted(sys.modules),
                  "built": built}))
"""


BUILT_IN = {"data_processing", "email", "image_processing", "report_generation", "webhook"}


def _started_worker_modules(**env: str) -> dict[str, list[str]]:
    clean = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=clean,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded: dict[str, list[str]] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_worker_start_imports_no_handler_library() -> None:
    loaded = _started_worker_modules()
    assert set(loaded["types"]) >= BUILT_IN
    present = [m for m in NOT_AT_START if m in loaded["modules"]]
    assert present == [], f"imported at worker start: {present}"


def test_worker_start_builds_no_built_in_payload_model() -> None:
    """The five types' payload models are ``defer_build``: their validators (pydantic's
    core schemas, 0.25 MB) are built by the first payload of that type, in the API or the
    worker, not by every worker at start."""
    built = set(_started_worker_modules()["built"])
    assert built & BUILT_IN == set(), f"built at worker start: {sorted(built & BUILT_IN)}"


def test_a_deferred_payload_model_still_validates_on_first_use() -> None:
    from pydantic import ValidationError

    from shared.job_types.image_processing import ImagePayload

    with pytest.raises(ValidationError) as caught:
        ImagePayload.model_validate({"source": "s3://b/k", "operations": [{"op": "spin"}]})
    assert "operations" in {e["loc"][0] for e in caught.value.errors()}


def test_an_email_payload_is_still_validated_without_sending() -> None:
    """The address check is deferred, not dropped: the first email validated imports it."""
    from pydantic import ValidationError

    from shared.job_types.email import EmailPayload

    ok = EmailPayload.model_validate({"to": "a@example.com", "subject": "s", "body": "b"})
    assert ok.to == ["a@example.com"]
    try:
        EmailPayload.model_validate({"to": "not an address", "subject": "s", "body": "b"})
    except ValidationError as exc:
        assert exc.errors()[0]["loc"][0] == "to"
    else:
        raise AssertionError("an invalid address was accepted")
