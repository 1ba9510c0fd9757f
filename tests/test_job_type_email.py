"""email end to end: created through the API, sent by a real worker, found where it
landed (moto's SES record of sent mail; a local SMTP server's mailbox)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from shared.settings import Settings
from tests.support import job_api
from tests.support.aws_moto import SENDER, Moto, use_moto
from tests.support.smtp_sink import smtp_sink


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Moto:
    moto = use_moto(monkeypatch)
    moto.client("ses").verify_email_identity(EmailAddress=SENDER)
    return moto


@pytest.fixture
def settings(settings: Settings, aws: Moto) -> Settings:
    return settings.model_copy(update=aws.settings())


def _message(subject: str) -> dict[str, Any]:
    return {"to": ["ada@example.com", "alan@example.org"], "cc": "grace@example.net",
            "bcc": ["hidden@example.com"], "reply_to": "support@example.com",
            "subject": subject, "body": "Plain text body.",
            "html": "<p>HTML <b>body</b>.</p>"}


async def test_email_through_ses_is_in_the_sent_mail(api: Any, start_worker: Any,
                                                     aws: Moto) -> None:
    subject = "Welcome " + secrets.token_hex(4)
    job_id = await job_api.create(api, "email", _message(subject))
    await start_worker()
    job = await job_api.finished(api, job_id)
    assert job["status"] == "COMPLETED", job["last_error"]
    assert job["result"]["backend"] == "ses"
    assert job["result"]["recipients"] == 4

    sent = [m for m in aws.sent_emails() if m["subject"] == subject]
    assert len(sent) == 1
    mail = sent[0]
    assert mail["id"] == job["result"]["message_id"]
    assert mail["source"] == SENDER
    assert mail["destinations"] == {"ToAddresses": ["ada@example.com", "alan@example.org"],
                                    "CcAddresses": ["grace@example.net"],
                                    "BccAddresses": ["hidden@example.com"]}
    assert mail["body"] == "<p>HTML <b>body</b>.</p>"  # moto keeps the HTML part


async def test_ses_rejection_is_permanent(api: Any, start_worker: Any, aws: Moto) -> None:
    """SES refuses an unverified sender (MessageRejected): no retry can fix that."""
    await start_worker(email_sender="stranger@unverified.example")
    job_id = await job_api.create(api, "email", _message("nope"))
    job = await job_api.finished(api, job_id)
    assert job["status"] == "FAILED"
    assert job["attempts"] == 1
    assert "MessageRejected" in job["last_error"]


async def test_email_through_smtp_reaches_the_mailbox(api: Any, start_worker: Any) -> None:
    with smtp_sink() as (sink, port):
        await start_worker(email_backend="smtp", smtp_host="127.0.0.1", smtp_port=port)
        subject = "Über-Report ✓ " + secrets.token_hex(4)
        job_id = await job_api.create(api, "email", _message(subject))
        job = await job_api.finished(api, job_id)
        assert job["status"] == "COMPLETED", job["last_error"]
        assert job["result"]["backend"] == "smtp"

        assert len(sink.received) == 1
        got = sink.received[0]
        assert got.sender == SENDER
        assert sorted(got.recipients) == ["ada@example.com", "alan@example.org",
                                          "grace@example.net", "hidden@example.com"]
        msg = got.message
        assert msg["Subject"] == subject
        assert msg["To"] == "ada@example.com, alan@example.org"
        assert msg["Cc"] == "grace@example.net"
        assert msg["Reply-To"] == "support@example.com"
        assert msg["Bcc"] is None  # bcc goes in the envelope only
        assert msg["Message-ID"] == job["result"]["message_id"]
        text = msg.get_body(("plain",))
        html = msg.get_body(("html",))
        assert text is not None and text.get_content().strip() == "Plain text body."
        assert html is not None and html.get_content().strip() == "<p>HTML <b>body</b>.</p>"


async def test_smtp_refusing_every_recipient_is_permanent(api: Any, start_worker: Any
                                                          ) -> None:
    with smtp_sink() as (sink, port):
        sink.refuse = {"nobody@example.com"}
        await start_worker(email_backend="smtp", smtp_port=port)
        job_id = await job_api.create(api, "email", {"to": "nobody@example.com",
                                                     "subject": "hi", "body": "hi"})
        job = await job_api.finished(api, job_id)
        assert job["status"] == "FAILED"
        assert job["attempts"] == 1
        assert "refused every recipient" in job["last_error"]
        assert sink.received == []


async def test_smtp_server_down_is_retried(api: Any, start_worker: Any) -> None:
    from tests.support.aws_moto import free_port

    await start_worker(email_backend="smtp", smtp_port=free_port(), smtp_timeout_seconds=2)
    job_id = await job_api.create(api, "email", {"to": "a@example.com", "subject": "s",
                                                 "body": "b"}, max_retries=1)
    job = await job_api.finished(api, job_id)
    assert job["status"] == "FAILED"
    assert job["attempts"] == 2  # retried once, then dead-lettered
    assert "RetryableError" in job["last_error"]


BAD = [
    ({"to": "not-an-address", "subject": "s", "body": "b"}, ["to"]),
    ({"to": ["a@example.com", "b@"], "subject": "s", "body": "b"}, ["to", 1]),
    ({"to": [], "subject": "s", "body": "b"}, ["to"]),
    ({"to": "a@example.com", "body": "b"}, ["subject"]),
    ({"to": "a@example.com", "subject": "a\r\nBcc: x@evil.example", "body": "b"},
     ["subject"]),
    ({"to": "a@example.com", "subject": "s", "body": "b", "cc": ["x"]}, ["cc", 0]),
    ({"to": "a@example.com", "subject": "s", "body": "b", "reply_to": 3}, ["reply_to"]),
    ({"to": "a@example.com", "subject": "s", "body": "b", "attachments": []},
     ["attachments"]),
    ({"to": [f"u{i}@example.com" for i in range(51)], "subject": "s", "body": "b"}, ["to"]),
]


async def test_bad_email_payloads_get_422_naming_the_field(api: Any) -> None:
    for payload, loc in BAD:
        locs = await job_api.refused(api, "email", payload)
        assert ["body", "payload", *loc] in locs, (payload, locs)
