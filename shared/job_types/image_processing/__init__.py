"""image_processing: read an image from S3, apply operations in order, write it back.

Operations: resize, thumbnail, crop, rotate, grayscale; output jpeg, png or webp. An
image larger than ``AJS_IMAGE_MAX_PIXELS`` (a decompression bomb) or one Pillow cannot
decode is a permanent error with the reason, and the worker carries on.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.job_types.s3uri import Destination, S3Uri
from shared.registry import JobContext, job_type

Side = Annotated[int, Field(ge=1, le=20_000)]


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class Resize(_Op):
    """Scale to width and/or height; with one side given (or keep_aspect), keep the ratio."""

    op: Literal["resize"]
    width: Side | None = None
    height: Side | None = None
    keep_aspect: bool = False

    @model_validator(mode="after")
    def _a_side(self) -> Resize:
        if self.width is None and self.height is None:
            raise ValueError("give width, height or both")
        return self


class Thumbnail(_Op):
    """Shrink (never enlarge) to fit within width x height, keeping the ratio."""

    op: Literal["thumbnail"]
    width: Side
    height: Side


class Crop(_Op):
    """Keep the box from (left, top) to (right, bottom), in pixels."""

    op: Literal["crop"]
    left: int = Field(ge=0)
    top: int = Field(ge=0)
    right: Side
    bottom: Side

    @model_validator(mode="after")
    def _a_box(self) -> Crop:
        if self.right <= self.left or self.bottom <= self.top:
            raise ValueError("right must exceed left and bottom must exceed top")
        return self


class Rotate(_Op):
    """Rotate counter-clockwise by degrees; expand grows the canvas to fit."""

    op: Literal["rotate"]
    degrees: float = Field(ge=-360, le=360)
    expand: bool = True


class Grayscale(_Op):
    op: Literal["grayscale"]


Operation = Annotated[Resize | Thumbnail | Crop | Rotate | Grayscale, Field(discriminator="op")]


class ImagePayload(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    source: S3Uri
    operations: list[Operation] = Field(default_factory=list, max_length=20)
    format: Literal["jpeg", "png", "webp"]
    quality: int | None = Field(None, ge=1, le=100, description="jpeg and webp only.")
    destination: Destination


@job_type("image_processing", ImagePayload, timeout_seconds=120, concurrency_limit=8)
async def process_image(payload: ImagePayload, ctx: JobContext) -> dict[str, Any]:
    """Resize, crop, rotate or grayscale an image from S3 (Pillow)."""
    from shared.job_types.image_processing import operations as imaging

    return await imaging.run(payload, ctx)
