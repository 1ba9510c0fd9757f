"""image_processing: transform an image. (Core version.)"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from shared.registry import JobContext, job_type


class ImagePayload(BaseModel):
    source: str
    operations: list[dict[str, Any]] = []


@job_type("image_processing", ImagePayload)
async def process_image(payload: ImagePayload, ctx: JobContext) -> dict[str, Any]:
    """Transform an image."""
    return {"source": payload.source, "operations": len(payload.operations)}
