"""email: send one message through Amazon SES (boto3) or SMTP (aiosmtplib).

The backend is configuration (``AJS_EMAIL_BACKEND``), not payload: a caller says what to
send, the deployment says how. The default rate limit (``AJS_EMAIL_RATE_LIMIT``, 10 per
second across all workers) matches SES's starting sending quota. Delivery is at least
once: a worker that dies after the send but before it settles sends the message again.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, EmailStr, Field, model_validator

from shared.registry import JobContext, job_type
from shared.settings import get_settings

MAX_RECIPIENTS = 50  # SES's limit per message (to + cc + bcc)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Addresses = Annotated[list[EmailStr], BeforeValidator(_as_list),
                      Field(max_length=MAX_RECIPIENTS)]
"""One address or a list of them; each is validated (email-validator, no DNS lookup)."""


class EmailPayload(BaseModel):
    # Built on first use: the address validator (email-validator, and idna under it) is
    # then imported by the first email a process validates, not by every worker at start.
    model_config = ConfigDict(extra="forbid", defer_build=True)

    to: Addresses = Field(min_length=1, description="One address or a list.")
    subject: str = Field(min_length=1, max_length=998, pattern=r"^[^\r\n]*$")
    body: str = Field(description="Plain-text body.")
    html: str | None = Field(None, description="HTML alternative of the body.")
    cc: Addresses = []
    bcc: Addresses = []
    reply_to: Addresses = []

    @model_validator(mode="after")
    def _few_recipients(self) -> EmailPayload:
        if len(self.to) + len(self.cc) + len(self.bcc) > MAX_RECIPIENTS:
            raise ValueError(f"at most {MAX_RECIPIENTS} recipients in to, cc and bcc together")
        return self


@job_type("email", EmailPayload, rate_limit=(get_settings().email_rate_limit, 1.0),
          max_retries=5, timeout_seconds=60)
async def send_email(payload: EmailPayload, ctx: JobContext) -> dict[str, Any]:
    """Send an email through SES or SMTP (AJS_EMAIL_BACKEND)."""
    from shared.job_types.email import sending as mail

    return await mail.send(payload, ctx)
