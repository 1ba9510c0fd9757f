"""The image pipeline behind image_processing (Pillow), run in a thread.

Decoding untrusted images is where things go wrong: a small file can claim billions of
pixels (a decompression bomb) and a damaged one can fail anywhere in the decoder. So the
size is checked from the header before any pixel is decoded, every operation's output
size is checked before it is made, and any decoding failure becomes a PermanentError
that names the reason. The worker never sees a Pillow exception.
"""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.job_types import aws
from shared.registry import JobContext, PermanentError

if TYPE_CHECKING:
    from shared.job_types.image_processing import ImagePayload, Operation

PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
CONTENT_TYPE = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


async def run(payload: ImagePayload, ctx: JobContext) -> dict[str, Any]:
    return await asyncio.to_thread(_run, payload, ctx)


def _run(payload: ImagePayload, ctx: JobContext) -> dict[str, Any]:
    clients = aws.clients(ctx.resources, ctx.settings)
    body, _ = clients.open(payload.source, ctx.settings.image_max_bytes)
    try:
        data = body.read()
    finally:
        body.close()
    out, size = transform(data, payload, ctx.settings.image_max_pixels)
    clients.upload(io.BytesIO(out), payload.destination, CONTENT_TYPE[payload.format])
    return {"source": payload.source, "destination": payload.destination,
            "format": payload.format, "width": size[0], "height": size[1], "bytes": len(out),
            "operations": [op.op for op in payload.operations]}


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode untrusted bytes, refusing bombs and damaged files with a clear reason."""
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            raise PermanentError(
                f"decompression bomb refused: the image claims {width}x{height} = "
                f"{width * height} pixels, over the limit of {max_pixels} "
                "(AJS_IMAGE_MAX_PIXELS)")
        img.load()
        return ImageOps.exif_transpose(img) or img
    except PermanentError:
        raise
    except Image.DecompressionBombError as exc:
        raise PermanentError(f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise PermanentError("not an image Pillow can read (unknown or corrupt header)"
                             ) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as exc:
        # Pillow's decoders signal damaged data with any of these.
        raise PermanentError(f"corrupt or truncated image: {type(exc).__name__}: {exc}"
                             ) from exc


def _check(size: tuple[int, int], max_pixels: int, op: str) -> tuple[int, int]:
    if size[0] * size[1] > max_pixels:
        raise PermanentError(f"{op} would make {size[0]}x{size[1]} pixels, over the limit "
                             f"of {max_pixels} (AJS_IMAGE_MAX_PIXELS)")
    return size


def apply(img: Image.Image, op: Operation, max_pixels: int) -> Image.Image:
    w, h = img.size
    if op.op == "resize":
        if op.width and op.height and not op.keep_aspect:
            size = (op.width, op.height)
        elif op.width and (not op.height or op.width / w <= op.height / h):
            size = (op.width, max(1, round(h * op.width / w)))
        else:
            assert op.height is not None
            size = (max(1, round(w * op.height / h)), op.height)
        return img.resize(_check(size, max_pixels, "resize"), Image.Resampling.LANCZOS)
    if op.op == "thumbnail":
        img = img.copy()
        img.thumbnail((op.width, op.height), Image.Resampling.LANCZOS)
        return img
    if op.op == "crop":
        if op.right > w or op.bottom > h:
            raise PermanentError(f"crop box ({op.left}, {op.top}, {op.right}, {op.bottom}) "
                                 f"lies outside the {w}x{h} image")
        return img.crop((op.left, op.top, op.right, op.bottom))
    if op.op == "rotate":
        if op.expand:
            rotated = img.rotate(op.degrees, expand=True, resample=Image.Resampling.BICUBIC)
            _check(rotated.size, max_pixels, "rotate")
            return rotated
        return img.rotate(op.degrees, resample=Image.Resampling.BICUBIC)
    # grayscale (keeping transparency where there is some)
    return img.convert("LA" if _has_alpha(img) else "L")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info


def encode(img: Image.Image, fmt: str, quality: int | None) -> bytes:
    if fmt == "jpeg" and img.mode not in ("L", "RGB", "CMYK"):
        if _has_alpha(img):  # JPEG has no alpha: flatten onto white, not black
            rgba = img.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            img = flat
        else:
            img = img.convert("RGB")
    options: dict[str, Any] = {}
    if quality is not None and fmt in ("jpeg", "webp"):
        options["quality"] = quality
    if fmt == "png":
        options["optimize"] = True
    buf = io.BytesIO()
    img.save(buf, PIL_FORMAT[fmt], **options)
    return buf.getvalue()


def transform(data: bytes, payload: ImagePayload, max_pixels: int
              ) -> tuple[bytes, tuple[int, int]]:
    img = decode(data, max_pixels)
    for op in payload.operations:
        img = apply(img, op, max_pixels)
    return encode(img, payload.format, payload.quality), img.size
