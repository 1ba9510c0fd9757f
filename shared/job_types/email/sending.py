"""Delivering an email: SES through boto3, or SMTP through aiosmtplib.

Both backends map their failures the same way: a refused address, sender or
configuration (5xx, SES's MessageRejected) is permanent; throttling, 4xx and broken
connections are retried.
"""

from __future__ import annotations

import asyncio
import socket
from email.message import EmailMessage
from email.utils import make_msgid
from typing import TYPE_CHECKING, Any

import aiosmtplib
from botocore.exceptions import BotoCoreError, ClientError

from shared.job_types import aws
from shared.registry import JobContext, PermanentError, RetryableError

if TYPE_CHECKING:
    from mypy_boto3_ses.type_defs import BodyTypeDef, DestinationTypeDef

    from shared.job_types.email import EmailPayload


async def send(payload: EmailPayload, ctx: JobContext) -> dict[str, Any]:
    backend = ctx.settings.email_backend
    refused: dict[str, str] = {}
    if backend == "smtp":
        message_id, refused = await send_smtp(payload, ctx)
    else:
        message_id = await asyncio.to_thread(send_ses, payload, ctx)
    ctx.logger.info("email sent", extra={"backend": backend, "message_id": message_id})
    return {"backend": backend, "message_id": message_id, "to": payload.to,
            "recipients": len(payload.to) + len(payload.cc) + len(payload.bcc),
            "refused": refused, "subject": payload.subject}


def send_ses(payload: EmailPayload, ctx: JobContext) -> str:
    """SES's structured SendEmail: it builds the MIME message (text and HTML parts)."""
    ses = aws.clients(ctx.resources, ctx.settings).ses()
    body: BodyTypeDef = {"Text": {"Data": payload.body, "Charset": "UTF-8"}}
    if payload.html is not None:
        body["Html"] = {"Data": payload.html, "Charset": "UTF-8"}
    destination: DestinationTypeDef = {"ToAddresses": payload.to}
    if payload.cc:
        destination["CcAddresses"] = payload.cc
    if payload.bcc:
        destination["BccAddresses"] = payload.bcc
    try:
        sent = ses.send_email(
            Source=ctx.settings.email_sender, Destination=destination,
            Message={"Subject": {"Data": payload.subject, "Charset": "UTF-8"}, "Body": body},
            ReplyToAddresses=payload.reply_to)
    except (ClientError, BotoCoreError) as exc:
        raise aws.classify(exc, "SES SendEmail") from exc
    return sent["MessageId"]


def build_message(payload: EmailPayload, sender: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(payload.to)
    if payload.cc:
        msg["Cc"] = ", ".join(payload.cc)
    if payload.reply_to:
        msg["Reply-To"] = ", ".join(payload.reply_to)
    msg["Subject"] = payload.subject
    # make_msgid() without a domain asks DNS for our FQDN, which can hang in a sandbox.
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "localhost")
    msg.set_content(payload.body)
    if payload.html is not None:
        msg.add_alternative(payload.html, subtype="html")
    return msg


async def send_smtp(payload: EmailPayload, ctx: JobContext) -> tuple[str, dict[str, str]]:
    """Send over one SMTP connection; returns the Message-ID and the refused recipients
    (the server accepted the message for the others)."""
    s = ctx.settings
    msg = build_message(payload, s.email_sender)
    recipients = [*payload.to, *payload.cc, *payload.bcc]  # bcc: envelope only, no header
    try:
        refused, _ = await aiosmtplib.send(
            msg, recipients=recipients, hostname=s.smtp_host, port=s.smtp_port,
            username=s.smtp_username or None, password=s.smtp_password or None,
            use_tls=s.smtp_tls == "tls",
            start_tls={"auto": None, "starttls": True}.get(s.smtp_tls, False),
            timeout=s.smtp_timeout_seconds, local_hostname=socket.gethostname())
    except aiosmtplib.SMTPRecipientsRefused as exc:
        raise PermanentError(f"SMTP refused every recipient: {exc}") from exc
    except aiosmtplib.SMTPResponseException as exc:
        if exc.code >= 500:
            raise PermanentError(f"SMTP {exc.code}: {exc.message}") from exc
        raise RetryableError(f"SMTP {exc.code}: {exc.message}") from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise RetryableError(f"SMTP {s.smtp_host}:{s.smtp_port}: {exc}") from exc
    bad = {addr: f"{resp.code} {resp.message}" for addr, resp in refused.items()}
    if bad:
        ctx.logger.warning("some recipients refused", extra={"refused": bad})
    return str(msg["Message-ID"]), bad
