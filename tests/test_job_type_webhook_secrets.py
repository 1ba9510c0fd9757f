"""Credentials in webhook payloads: the receiver gets them, no API answer shows them, and
PostgreSQL holds them only encrypted (AJS_PAYLOAD_KEY); without a key they are refused."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pydantic
import pytest
from cryptography.fernet import Fernet

from shared.job_types.webhook import signing as webhook_signing
from shared.settings import Settings
from tests.conftest import admin_headers
from tests.support import job_api
from tests.support.http_receiver import Receiver, http_receiver

PREFIX = job_api.PREFIX
BEARER = "Bearer tok-7f3a9c1e5b"
API_KEY = "key-2b8d4e6f0a"
COOKIE = "session=ck-91c3e5a7"
CUSTOM = "cust-4d6f8a0c2e"
PASSWORD = "pw-5e7a9c1b3d"
SECRETS = [BEARER.split()[1], API_KEY, COOKIE.split("=")[1], CUSTOM, PASSWORD]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_secret": webhook_signing.new_secret(),
                                       "webhook_allowlist": ["127.0.0.1/32"],
                                       "payload_key": Fernet.generate_key().decode()})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with http_receiver() as r:
        yield r


def _headers_payload(receiver: Receiver, path: str) -> dict[str, Any]:
    return {"url": receiver.url(path), "body": {"n": 1},
            "headers": {"Authorization": BEARER, "X-Api-Key": API_KEY, "Cookie": COOKIE,
                        "X-Custom-Token": CUSTOM, "X-Tenant": "acme"},
            "secret_headers": ["x-custom-token"]}


def _userinfo_payload(receiver: Receiver, path: str) -> dict[str, Any]:
    return {"url": f"http://alice:{PASSWORD}@127.0.0.1:{receiver.port}{path}"}


def _clean(answer: httpx.Response) -> Any:
    """The answer's JSON, after checking that no credential appears anywhere in it."""
    for secret in SECRETS:
        assert secret not in answer.text, (secret, answer.request.url, answer.text)
    return answer.json()


async def test_receiver_gets_credentials_that_no_answer_shows_and_the_store_seals(
        api: httpx.AsyncClient, start_worker: Any, receiver: Receiver, db: asyncpg.Pool
        ) -> None:
    spec = {"job_type": "webhook", "payload": _headers_payload(receiver, "/one"),
            "max_retries": 0}
    created = await api.post(f"{PREFIX}/jobs", json=spec, headers={"Idempotency-Key": "k1"})
    assert created.status_code == 201, created.text
    one = _clean(created)
    assert one["payload"]["headers"] == {
        "Authorization": "***", "X-Api-Key": "***", "Cookie": "***", "X-Custom-Token": "***",
        "X-Tenant": "acme"}
    assert "sealed" not in one["payload"]
    replay = await api.post(f"{PREFIX}/jobs", json=spec, headers={"Idempotency-Key": "k1"})
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert _clean(replay)["id"] == one["id"]

    batch = await api.post(f"{PREFIX}/jobs/batch", json={"jobs": [
        {"job_type": "webhook", "payload": _userinfo_payload(receiver, "/two"),
         "max_retries": 0},
        # Nothing listens on port 1: this one ends in the dead letter queue.
        {"job_type": "webhook", "payload": {**_headers_payload(receiver, "/three"),
                                            "url": "http://127.0.0.1:1/three"},
         "max_retries": 0}]})
    assert batch.status_code == 201, batch.text
    two, three = _clean(batch)["jobs"]
    assert two["payload"]["url"] == f"http://***@127.0.0.1:{receiver.port}/two"

    # At rest: PostgreSQL holds a token, not the credentials.
    stored = await db.fetch("SELECT payload::text AS p FROM jobs")
    assert len(stored) == 3
    for row in stored:
        assert not any(secret in row["p"] for secret in SECRETS), row["p"]
        assert json.loads(row["p"])["sealed"]

    await start_worker()
    for job_id in (one["id"], two["id"]):
        job = await job_api.finished(api, job_id)
        assert job["status"] == "COMPLETED", job["last_error"]
    failed = await job_api.finished(api, three["id"])
    assert failed["status"] == "FAILED"

    # The receiver got every credential as given.
    by_path = {r.path: r.headers for r in receiver.requests}
    assert by_path["/one"]["authorization"] == BEARER
    assert by_path["/one"]["x-api-key"] == API_KEY
    assert by_path["/one"]["cookie"] == COOKIE
    assert by_path["/one"]["x-custom-token"] == CUSTOM
    assert by_path["/one"]["x-tenant"] == "acme"
    basic = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert by_path["/two"]["authorization"] == f"Basic {basic}"

    # No answer shows them: get, list, the dead letter queue, a redrive.
    for job_id in (one["id"], two["id"], three["id"]):
        _clean(await api.get(f"{PREFIX}/jobs/{job_id}"))
    assert len(_clean(await api.get(f"{PREFIX}/jobs"))["items"]) == 3
    [dead] = _clean(await api.get(f"{PREFIX}/dead-letters"))["items"]
    assert dead["id"] == three["id"]
    assert dead["payload"]["headers"]["Authorization"] == "***"
    _clean(await api.post(f"{PREFIX}/dead-letters/{three['id']}/redrive"))


async def test_without_a_key_credentials_are_refused_with_422_naming_the_field(
        api: httpx.AsyncClient, settings: Settings, receiver: Receiver) -> None:
    from functions.api.app import create_app

    app = create_app(settings.model_copy(update={"payload_key": ""}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api",
                                 headers=await admin_headers(settings)) as keyless:
        try:
            for payload, loc in [
                    ({"url": receiver.url(), "headers": {"authorization": BEARER}},
                     ["headers"]),
                    ({"url": receiver.url(), "headers": {"X-Custom-Token": CUSTOM},
                      "secret_headers": ["X-Custom-Token"]}, ["headers"]),
                    (_userinfo_payload(receiver, "/x"), ["url"])]:
                r = await keyless.post(f"{PREFIX}/jobs",
                                       json={"job_type": "webhook", "payload": payload})
                assert r.status_code == 422, r.text
                error = _clean(r)["error"]
                assert ["body", "payload", *loc] in [d["loc"] for d in error["details"]]
                assert "AJS_PAYLOAD_KEY" in error["message"]
            # Headers that carry no credential need no key.
            ok = await keyless.post(f"{PREFIX}/jobs", json={"job_type": "webhook", "payload": {
                "url": receiver.url(), "headers": {"X-Tenant": "acme"}}})
            assert ok.status_code == 201, ok.text
            assert len((await keyless.get(f"{PREFIX}/jobs")).json()["items"]) == 1
        finally:
            await app.state.stores.close()


async def test_a_payload_sealed_with_another_key_fails_without_contacting_the_receiver(
        api: httpx.AsyncClient, start_worker: Any, receiver: Receiver) -> None:
    job_id = await job_api.create(api, "webhook", _headers_payload(receiver, "/x"))
    await start_worker(payload_key=Fernet.generate_key().decode())
    job = await job_api.finished(api, job_id)
    assert (job["status"], job["attempts"]) == ("FAILED", 1)
    assert "cannot be opened" in job["last_error"]
    assert receiver.accepted == 0


async def test_a_rotated_key_still_opens_what_the_old_one_sealed(
        settings: Settings) -> None:
    from shared.job_types.webhook import sealing

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    payload = {"url": "https://u:p@example.com/h", "headers": {"Authorization": BEARER}}
    stored = sealing.seal(payload, settings.model_copy(update={"payload_key": old}))
    rotated = settings.model_copy(update={"payload_key": f"{new},{old}"})
    assert sealing.unseal(stored, rotated) == payload


def test_payloads_stored_in_plain_text_before_sealing_are_redacted_too() -> None:
    from shared.job_types.webhook import sealing

    legacy = {"url": "https://u:p@example.com/h", "secret_headers": ["X-Sig"],
              "headers": {"authorization": BEARER, "X-Sig": "s", "X-Tenant": "acme"}}
    assert sealing.redact(legacy) == {
        "url": "https://***@example.com/h", "secret_headers": ["X-Sig"],
        "headers": {"authorization": "***", "X-Sig": "***", "X-Tenant": "acme"}}


def test_a_validation_error_never_quotes_the_payload() -> None:
    """The worker stores a payload's validation error as last_error, which answers show."""
    from shared.job_types.webhook import WebhookPayload

    with pytest.raises(pydantic.ValidationError) as caught:
        WebhookPayload.model_validate({"url": f"http://a:{PASSWORD}@h/", "timeout": -1,
                                       "headers": {"Cookie": CUSTOM, "Bad Name": ""}})
    assert PASSWORD not in str(caught.value) and CUSTOM not in str(caught.value)
