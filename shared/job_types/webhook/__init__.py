"""webhook: deliver one signed HTTP request (Standard Webhooks) to a checked address.

2xx completes; 408, 429, 5xx, timeouts and connection failures are retried (honouring
``Retry-After``); redirects and other 4xx are permanent. The SSRF guard refuses targets
that resolve to loopback, private, link-local or metadata addresses unless allowlisted
(``AJS_WEBHOOK_ALLOWLIST``), and connects to the address it checked.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from shared.registry import JobContext, job_type

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP header name (RFC 9110)
# Set by the delivery itself: a caller must not forge the signature or steer the transport.
RESERVED_HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature", "host",
                              "content-length", "transfer-encoding", "connection"})


class WebhookPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: HttpUrl = Field(description="http:// or https:// URL of the receiver.")
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    body: Any = Field(None, description="JSON value sent as JSON; a string is sent verbatim.")
    timeout: float | None = Field(None, gt=0, le=120,
                                  description="Seconds; default AJS_WEBHOOK_TIMEOUT_SECONDS.")

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the delivery and cannot be given")
            if "\r" in text or "\n" in text:
                raise ValueError(f"header {name!r} holds a line break")
        return value


@job_type("webhook", WebhookPayload, max_retries=5, timeout_seconds=150)
async def deliver_webhook(payload: WebhookPayload, ctx: JobContext) -> dict[str, Any]:
    """Deliver a signed webhook (Standard Webhooks) to a checked address."""
    from shared.job_types.webhook import delivery as webhook_delivery

    return await webhook_delivery.deliver(payload, ctx)
