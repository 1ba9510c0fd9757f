"""webhook: deliver one signed HTTP request (Standard Webhooks) to a checked address.

2xx completes; 408, 429, 5xx, timeouts and connection failures are retried (honouring
``Retry-After``); redirects and other 4xx are permanent. The SSRF guard refuses targets
that resolve to loopback, private, link-local or metadata addresses unless allowlisted
(``AJS_WEBHOOK_ALLOWLIST``), and connects to the address it checked. ``timeout`` bounds
the whole delivery (resolve, connect, send, read), not each read: a receiver that
trickles its answer cannot hold a worker slot. Credentials in headers and in the URL are
stored sealed and never shown (see ``sealing``); the receiver's answer body is kept only
when the payload asks (``response_bytes``).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationInfo, field_validator

from shared.job_types.webhook import sealing
from shared.registry import JobContext, job_type

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP header name (RFC 9110)
# Set by the delivery itself: a caller must not forge the signature or steer the transport.
RESERVED_HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature", "host",
                              "content-length", "transfer-encoding", "connection"})


MAX_RESPONSE_BYTES = 4096


def _cannot_seal(info: ValidationInfo) -> bool:
    """Validating a client's payload (the API passes settings) while no key is set: a
    credential could only be stored in plain text, so it is refused instead."""
    context: Any = info.context
    settings = context.get("settings") if isinstance(context, dict) else None
    return settings is not None and not settings.payload_key.strip()


class WebhookPayload(BaseModel):
    # A validation error's text would quote its input, credentials included, and the
    # worker stores that text as the job's last_error, which answers show.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, defer_build=True)

    url: HttpUrl = Field(description="http:// or https:// URL of the receiver.")
    method: Literal["POST", "PUT"] = "POST"
    secret_headers: list[str] = Field(
        default_factory=list, max_length=20,
        description="More header names that carry credentials (stored sealed, shown as ***); "
        "Authorization, Proxy-Authorization, Cookie and X-Api-Key always are.")
    headers: dict[str, str] = Field(default_factory=dict, max_length=50,
                                    description="Extra request headers.")
    body: Any = Field(None, description="JSON value sent as JSON; a string is sent verbatim.")
    timeout: float | None = Field(
        None, gt=0, le=120, description="Seconds for the whole delivery (connect, send, read); "
        "default AJS_WEBHOOK_TIMEOUT_SECONDS.")
    response_bytes: int = Field(
        0, ge=0, le=MAX_RESPONSE_BYTES, description="Bytes of the receiver's answer body to "
        "keep in the result and in error messages; 0: none.")

    @field_validator("url")
    @classmethod
    def _sealable_url(cls, value: HttpUrl, info: ValidationInfo) -> HttpUrl:
        if (value.username or value.password) and _cannot_seal(info):
            raise ValueError(sealing.no_key_message("the URL's user info"))
        return value

    @field_validator("secret_headers")
    @classmethod
    def _header_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
        return value

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        secret = sealing.secret_names({"secret_headers": info.data.get("secret_headers")})
        for name, text in value.items():
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the delivery and cannot be given")
            if "\r" in text or "\n" in text:
                raise ValueError(f"header {name!r} holds a line break")
            if name.lower() in secret and _cannot_seal(info):
                raise ValueError(sealing.no_key_message(f"header {name!r}"))
        return value


@job_type("webhook", WebhookPayload, max_retries=5, timeout_seconds=150,
          seal_payload=sealing.seal, unseal_payload=sealing.unseal,
          redact_payload=sealing.redact)
async def deliver_webhook(payload: WebhookPayload, ctx: JobContext) -> dict[str, Any]:
    """Deliver a signed webhook (Standard Webhooks) to a checked address."""
    from shared.job_types.webhook import delivery as webhook_delivery

    return await webhook_delivery.deliver(payload, ctx)
