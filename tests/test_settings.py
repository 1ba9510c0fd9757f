"""Settings read from the environment: what pydantic-settings did for us, kept by our own
reader (``shared.settings.environment``)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.settings import IamGrant, Settings


@pytest.fixture(autouse=True)
def _no_ajs_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's own AJS_ variables (if any) must not decide these tests."""
    import os

    for key in list(os.environ):
        if key.upper().startswith("AJS_") or key.upper() in ("DATABASE_URL", "REDIS_URL"):
            monkeypatch.delenv(key)


def test_prefixed_variables_set_fields_whatever_their_case(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AJS_WORKER_CONCURRENCY", "7")
    monkeypatch.setenv("ajs_queue", "reports")
    monkeypatch.setenv("AJS_REDIS_CLUSTER", "true")
    s = Settings()
    assert (s.worker_concurrency, s.queue, s.redis_cluster) == (7, "reports", True)


def test_unset_fields_keep_their_defaults_and_unknown_variables_are_ignored(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AJS_NO_SUCH_KNOB", "1")
    monkeypatch.setenv("WORKER_CONCURRENCY", "9")  # no prefix: not ours
    s = Settings()
    assert s.worker_concurrency == 10
    assert s.database_url == "postgresql://postgres@127.0.0.1:5432/postgres"


def test_store_urls_are_read_with_or_without_the_prefix_the_prefixed_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://platform/db")
    monkeypatch.setenv("REDIS_URL", "redis://platform:6379/0")
    assert Settings().database_url == "postgresql://platform/db"
    monkeypatch.setenv("AJS_REDIS_URL", "redis://ours:6379/0")
    assert Settings().redis_url == "redis://ours:6379/0"


def test_keyword_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AJS_WORKER_CONCURRENCY", "7")
    monkeypatch.setenv("AJS_DATABASE_URL", "postgresql://env/db")
    s = Settings(worker_concurrency=3, database_url="postgresql://given/db")
    assert (s.worker_concurrency, s.database_url) == (3, "postgresql://given/db")


def test_lists_are_comma_separated_and_iam_principals_are_json(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AJS_JOB_MODULES", "app.jobs, app.more ,")
    monkeypatch.setenv("AJS_WEBHOOK_ALLOWLIST", "10.0.0.0/8,192.168.1.1")
    monkeypatch.setenv("AJS_AUTH_IAM_PRINCIPALS",
                       '{"arn:aws:iam::1:role/r": {"scopes": ["jobs:read"], "namespace": "a"}}')
    s = Settings()
    assert s.job_modules == ["app.jobs", "app.more"]
    assert s.webhook_allowlist == ["10.0.0.0/8", "192.168.1.1"]
    assert s.auth_iam_principals == {
        "arn:aws:iam::1:role/r": IamGrant(scopes=["jobs:read"], namespace="a")}


@pytest.mark.parametrize(("name", "value"), [
    ("AJS_WORKER_CONCURRENCY", "many"),
    ("AJS_WORKER_CONCURRENCY", "0"),  # ge=1
    ("AJS_AUTH_IAM_PRINCIPALS", "{not json"),
    ("AJS_WEBHOOK_ALLOWLIST", "not-a-network"),
])
def test_a_bad_value_names_its_field(monkeypatch: pytest.MonkeyPatch, name: str,
                                     value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert caught.value.errors()[0]["loc"][0] == name.removeprefix("AJS_").lower()
