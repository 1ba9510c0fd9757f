"""email: send one message. (Core version: validates and records; delivery comes later.)"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, EmailStr

from shared.registry import JobContext, job_type


class EmailPayload(BaseModel):
    to: EmailStr | list[EmailStr]
    subject: str
    body: str
    html: str | None = None


@job_type("email", EmailPayload, rate_limit=(10, 1.0))
async def send_email(payload: EmailPayload, ctx: JobContext) -> dict[str, Any]:
    """Send an email."""
    recipients = payload.to if isinstance(payload.to, list) else [payload.to]
    ctx.logger.info("email accepted", extra={"recipients": len(recipients)})
    return {"recipients": recipients, "subject": payload.subject}
