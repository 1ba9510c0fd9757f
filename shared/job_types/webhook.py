"""webhook: deliver an HTTP request. (Core version.)"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from shared.registry import JobContext, job_type


class WebhookPayload(BaseModel):
    url: str
    method: Literal["POST", "PUT"] = "POST"
    body: Any = None


@job_type("webhook", WebhookPayload)
async def deliver_webhook(payload: WebhookPayload, ctx: JobContext) -> dict[str, Any]:
    """Deliver a webhook."""
    return {"url": payload.url}
