"""webhook end to end: deliveries from a real worker to a real HTTP receiver on
127.0.0.1 (allowlisted here), signatures checked with the ``standardwebhooks`` package,
and every answer class: 2xx, 429/5xx with Retry-After, timeouts, 3xx and 4xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from standardwebhooks import Webhook

from shared.job_types.webhook import signing as webhook_signing
from shared.job_types.webhook.delivery import retry_after
from shared.settings import Settings
from tests.support import job_api
from tests.support.http_receiver import Answer, Receiver, http_receiver

SECRET = webhook_signing.new_secret()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_secret": SECRET,
                                       "webhook_allowlist": ["127.0.0.1/32"]})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with http_receiver() as r:
        yield r


def test_signature_matches_the_reference_implementation() -> None:
    key = webhook_signing.decode_secret(SECRET)
    body = b'{"event":"paid","amount":12}'
    headers = webhook_signing.headers(key, "msg_1", int(datetime.now(UTC).timestamp()), body)
    assert Webhook(SECRET).verify(body, headers) == {"event": "paid", "amount": 12}
    assert headers["webhook-signature"] == Webhook(SECRET).sign(
        "msg_1", datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC),
        body.decode())


def test_retry_after_reads_seconds_and_dates_within_the_ceiling() -> None:
    assert retry_after("7", 3600) == 7
    assert retry_after("999999", 60) == 60
    assert retry_after("-5", 60) == 0
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    got = retry_after(soon, 3600)
    assert got is not None and 25 <= got <= 30
    assert retry_after("soon-ish", 60) is None
    assert retry_after(None, 60) is None


async def test_delivery_is_signed_and_the_result_keeps_the_body_bytes_asked_for(
        api: Any, start_worker: Any, receiver: Receiver) -> None:
    receiver.default = Answer(201, {"content-type": "text/plain"}, b"x" * 5000)
    body = {"event": "invoice.paid", "amount": 1250, "currency": "EUR", "note": "déjà vu"}
    job_id = await job_api.create(api, "webhook", {
        "url": receiver.url("/hooks/in?src=ajs"), "body": body,
        "headers": {"X-Tenant": "acme"}, "response_bytes": 1024})
    put_id = await job_api.create(api, "webhook", {
        "url": receiver.url("/hooks/text"), "method": "PUT", "body": "plain words"})
    await start_worker()
    job = await job_api.finished(api, job_id)
    assert job["status"] == "COMPLETED", job["last_error"]
    result = job["result"]
    assert result["status_code"] == 201
    assert result["response"] == "x" * 1024
    assert result["webhook_id"] == f"msg_{job_id}"

    put = await job_api.finished(api, put_id)
    assert put["status"] == "COMPLETED", put["last_error"]
    assert "response" not in put["result"]  # not asked for: the receiver's words stay out
    by_path = {r.path: r for r in receiver.requests}
    got = by_path["/hooks/in?src=ajs"]
    assert got.method == "POST"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-tenant"] == "acme"
    assert got.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert got.headers["webhook-id"] == f"msg_{job_id}"
    # The independent check: the reference library accepts the signature.
    assert Webhook(SECRET).verify(got.body, got.headers) == body
    text = by_path["/hooks/text"]
    assert (text.method, text.body) == ("PUT", b"plain words")
    assert text.headers["content-type"].startswith("text/plain")
    Webhook(SECRET).verify(text.body, text.headers, json_parse=False)  # raises if forged


async def test_5xx_and_429_retry_after_the_time_the_receiver_asked(
        api: Any, start_worker: Any, receiver: Receiver) -> None:
    receiver.answers = [Answer(503, {"Retry-After": "1"}, b"busy"),
                        Answer(429, {"Retry-After": "0"}, b"slow down"), Answer(200)]
    job_id = await job_api.create(api, "webhook", {"url": receiver.url(), "body": {"n": 1}})
    await start_worker()
    job = await job_api.finished(api, job_id)
    assert job["status"] == "COMPLETED", job["last_error"]
    assert job["attempts"] == 3
    reasons = [t["reason"] for t in job["history"] if t["to_status"] == "RETRYING"]
    assert reasons == ["retry in 1 s", "retry in 0 s"]
    first, second, _ = receiver.requests
    assert second.at - first.at >= 0.9  # the worker waited as asked
    assert {r.headers["webhook-id"] for r in receiver.requests} == {f"msg_{job_id}"}
    for r in receiver.requests:  # each attempt is signed afresh, and verifies
        Webhook(SECRET).verify(r.body, r.headers)


async def test_a_receiver_that_does_not_answer_in_time_is_retried(
        api: Any, start_worker: Any, receiver: Receiver) -> None:
    receiver.answers = [Answer(200, delay=3.0)]
    job_id = await job_api.create(api, "webhook", {"url": receiver.url(), "timeout": 0.3})
    await start_worker()
    job = await job_api.finished(api, job_id)
    assert job["status"] == "COMPLETED", job["last_error"]
    assert job["attempts"] == 2
    assert len(receiver.requests) == 2


async def test_4xx_and_redirects_are_permanent(api: Any, start_worker: Any,
                                               receiver: Receiver) -> None:
    receiver.answers = [Answer(404, body=b"no such hook"),
                        Answer(302, {"Location": "http://169.254.169.254/"})]
    missing = await job_api.create(api, "webhook", {"url": receiver.url("/a"),
                                                    "response_bytes": 100})
    await start_worker()
    job = await job_api.finished(api, missing)
    redirect = await job_api.create(api, "webhook", {"url": receiver.url("/b")})
    moved = await job_api.finished(api, redirect)
    assert (job["status"], job["attempts"]) == ("FAILED", 1)
    assert "answered 404: no such hook" in job["last_error"]
    assert (moved["status"], moved["attempts"]) == ("FAILED", 1)
    assert "redirects are not followed" in moved["last_error"]
    assert len(receiver.requests) == 2  # the redirect was not followed


async def test_no_secret_means_no_delivery(api: Any, start_worker: Any,
                                           receiver: Receiver) -> None:
    await start_worker(webhook_secret="")
    job = await job_api.finished(api, await job_api.create(api, "webhook",
                                                           {"url": receiver.url()}))
    assert (job["status"], job["attempts"]) == ("FAILED", 1)
    assert "AJS_WEBHOOK_SECRET is not set" in job["last_error"]
    assert receiver.accepted == 0


BAD = [
    ({}, ["url"]),
    ({"url": "ftp://example.com/x"}, ["url"]),
    ({"url": "not a url"}, ["url"]),
    ({"url": "https://example.com", "method": "GET"}, ["method"]),
    ({"url": "https://example.com", "headers": {"webhook-signature": "v1,forged"}},
     ["headers"]),
    ({"url": "https://example.com", "headers": {"Bad Name": "x"}}, ["headers"]),
    ({"url": "https://example.com", "headers": {"X-Trailing\n": "x"}}, ["headers"]),
    ({"url": "https://example.com", "headers": {"X-A": "a\r\nInjected: 1"}}, ["headers"]),
    ({"url": "https://example.com", "timeout": 0}, ["timeout"]),
    ({"url": "https://example.com", "response_bytes": 4097}, ["response_bytes"]),
    ({"url": "https://example.com", "secret_headers": ["Bad Name"]}, ["secret_headers"]),
    ({"url": "https://example.com", "retries": 3}, ["retries"]),
]


async def test_bad_webhook_payloads_get_422_naming_the_field(api: Any) -> None:
    for payload, loc in BAD:
        locs = await job_api.refused(api, "webhook", payload)
        assert ["body", "payload", *loc] in locs, (payload, locs)


def test_bodies_are_sent_as_compact_json_or_verbatim_text() -> None:
    from shared.job_types.webhook import WebhookPayload
    from shared.job_types.webhook.delivery import encode_body

    as_json = WebhookPayload.model_validate({"url": "https://e.example", "body": {"a": [1]}})
    assert encode_body(as_json) == (json.dumps({"a": [1]}, separators=(",", ":")).encode(),
                                    "application/json")
    text = WebhookPayload.model_validate({"url": "https://e.example", "body": "hi"})
    assert encode_body(text) == (b"hi", "text/plain; charset=utf-8")


async def test_timeout_is_a_deadline_for_the_whole_delivery_not_per_read(
        api: Any, start_worker: Any, receiver: Receiver) -> None:
    """The receiver sends its answer one byte a second: every read succeeds well within
    the 2 s timeout, so only a deadline over the whole delivery can stop it (a per-read
    timeout would wait ~50 s for the whole answer)."""
    receiver.answers = [Answer(200, body=b"fine", trickle=1.0)]
    job_id = await job_api.create(api, "webhook", {"url": receiver.url(), "timeout": 2},
                                  max_retries=0)
    await start_worker()
    job = await job_api.finished(api, job_id, timeout=30)
    assert job["status"] == "FAILED", job["result"]
    assert "no complete answer within 2 s" in job["last_error"]
    [request] = receiver.requests
    took = datetime.fromisoformat(job["finished_at"]).timestamp() - request.at
    assert 1.5 < took < 4.0, took  # cut at the deadline, not after the trickle ends
    assert receiver.trickled == 0
