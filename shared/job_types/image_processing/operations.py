"""The image pipeline behind image_processing (Pillow), run in a thread.

Decoding untrusted images is where things go wrong: a small file can claim billions of
pixels (a decompression bomb) and a damaged one can fail anywhere in the decoder. So the
size is checked from the header before any pixel is decoded, every operation's output
size is checked before it is made, and any decoding failure becomes a PermanentError
that names the reason. The worker never sees a Pillow exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import math
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.job_types import aws
from shared.job_types.image_processing import budget as budgets
from shared.registry import JobContext, PermanentError

if TYPE_CHECKING:
    from shared.job_types.image_processing import ImagePayload, Operation

PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
CONTENT_TYPE = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
BYTES_PER_PIXEL = 4  # Pillow keeps RGB, RGBA, CMYK, I and F at 4 bytes a pixel, L at 1
SPOOL_BYTES = 1024 * 1024  # a source waiting for its budget waits on disk beyond this
TRIM_ABOVE = 64 * 1024 * 1024  # after a job this large, hand freed memory back


async def run(payload: ImagePayload, ctx: JobContext) -> dict[str, Any]:
    """Fetch and read the header, wait for the memory the image will need, then decode.

    The wait is on the worker's event loop, not in a thread: threads are few and shared
    with every other job type. A thread cannot be stopped, so when the job is cancelled
    or times out mid-decode its share comes back only when the thread ends.
    """
    s = ctx.settings
    aws.ensure_writable(payload.destination, s)  # before any work, not after it
    source, size = await asyncio.to_thread(_fetch, payload, ctx)
    budget = budgets.of(ctx.resources, s.image_memory_budget_bytes)
    held = 0
    started = False  # once the thread runs, it owns (and closes) the source
    try:
        need = estimate(size, payload.operations)
        if need > budget.total:
            raise PermanentError(
                f"the {size[0]}x{size[1]} image and its operations need about "
                f"{need // 2**20} MiB, more than this worker's whole image budget of "
                f"{budget.total // 2**20} MiB (AJS_IMAGE_MEMORY_BUDGET_BYTES)")
        held = await budget.acquire(need)
        work = asyncio.ensure_future(asyncio.to_thread(_transform, source, payload, ctx,
                                                       need >= TRIM_ABOVE))
        started = True
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            budget.release_when_done(held, work)
            held = 0
            raise
    finally:
        budget.release(held)
        if not started:
            source.close()


def _fetch(payload: ImagePayload, ctx: JobContext) -> tuple[IO[bytes], tuple[int, int]]:
    """The source, spooled (to disk when large), and its size from the header alone."""
    clients = aws.clients(ctx.resources, ctx.settings)
    body, _ = clients.open(payload.source, ctx.settings.image_max_bytes)
    # Not a with block: on success the spool outlives this function (run() closes it).
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, mode="w+b")  # noqa: SIM115
    try:
        try:
            shutil.copyfileobj(body, spool, 256 * 1024)
        finally:
            body.close()
        spool.seek(0)
        return spool, probe(spool, ctx.settings.image_max_pixels)
    except BaseException:
        spool.close()
        raise


def _transform(source: IO[bytes], payload: ImagePayload, ctx: JobContext, trim: bool
               ) -> dict[str, Any]:
    try:
        source.seek(0)
        out, size = transform(source, payload, ctx.settings.image_max_pixels)
    finally:
        source.close()
        if trim:  # the decoded pixels are garbage by now
            budgets.give_back_memory()
    clients = aws.clients(ctx.resources, ctx.settings)
    clients.upload(io.BytesIO(out), payload.destination, CONTENT_TYPE[payload.format])
    return {"source": payload.source, "destination": payload.destination,
            "format": payload.format, "width": size[0], "height": size[1], "bytes": len(out),
            "operations": [op.op for op in payload.operations]}


def probe(data: IO[bytes], max_pixels: int) -> tuple[int, int]:
    """The image's size from its header (no pixel is decoded), refusing bombs."""
    with _untrusted():
        img = Image.open(data)
        _refuse_bomb(img.size, max_pixels)
        return img.size


def _refuse_bomb(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise PermanentError(
            f"decompression bomb refused: the image claims {width}x{height} = "
            f"{width * height} pixels, over the limit of {max_pixels} "
            "(AJS_IMAGE_MAX_PIXELS)")


def sizes(size: tuple[int, int], operations: list[Operation]) -> list[tuple[int, int]]:
    """The size of the image after each operation, from the sizes alone."""
    out = [size]
    w, h = size
    for op in operations:
        if op.op == "resize":
            w, h = _resize_size(op, w, h)
        elif op.op == "thumbnail":
            scale = min(op.width / w, op.height / h, 1.0)
            w, h = max(1, round(w * scale)), max(1, round(h * scale))
        elif op.op == "crop":
            w, h = op.right - op.left, op.bottom - op.top
        elif op.op == "rotate" and op.expand:
            a = math.radians(op.degrees)
            w, h = (math.ceil(abs(w * math.cos(a)) + abs(h * math.sin(a))) + 1,
                    math.ceil(abs(w * math.sin(a)) + abs(h * math.cos(a))) + 1)
        out.append((w, h))
    return out


def estimate(size: tuple[int, int], operations: list[Operation]) -> int:
    """Bytes a job holds at its peak: an operation's input and output live together, and
    decoding may make a transposed copy (EXIF orientation)."""
    steps = [w * h for w, h in sizes(size, operations)]
    pairs = [2 * steps[0], *map(sum, itertools.pairwise(steps))]
    return BYTES_PER_PIXEL * max(pairs)


@contextlib.contextmanager
def _untrusted() -> Iterator[None]:
    """Reading untrusted bytes: Pillow's failures become a PermanentError saying why."""
    try:
        yield
    except PermanentError:
        raise
    except Exception as exc:
        if (failure := _failure(exc)) is exc:
            raise
        raise failure from exc


def _failure(exc: Exception) -> Exception:
    """Pillow's failure on untrusted bytes as a PermanentError that says why (other errors
    are returned as they are)."""
    if isinstance(exc, Image.DecompressionBombError):
        return PermanentError(f"decompression bomb refused: {exc}")
    if isinstance(exc, UnidentifiedImageError):
        return PermanentError("not an image Pillow can read (unknown or corrupt header)")
    if isinstance(exc, OSError | SyntaxError | ValueError | EOFError | IndexError
                  | MemoryError):
        # Pillow's decoders signal damaged data with any of these.
        return PermanentError(f"corrupt or truncated image: {type(exc).__name__}: {exc}")
    return exc


def decode(data: bytes | IO[bytes], max_pixels: int) -> Image.Image:
    """Decode untrusted bytes, refusing bombs and damaged files with a clear reason."""
    with _untrusted():
        img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        _refuse_bomb(img.size, max_pixels)
        img.load()
        # in place: without it, an image that needs no turning is copied whole
        ImageOps.exif_transpose(img, in_place=True)
        return img


def _resize_size(op: Any, w: int, h: int) -> tuple[int, int]:
    if op.width and op.height and not op.keep_aspect:
        return (op.width, op.height)
    if op.width and (not op.height or op.width / w <= op.height / h):
        return (op.width, max(1, round(h * op.width / w)))
    assert op.height is not None
    return (max(1, round(w * op.height / h)), op.height)


def _check(size: tuple[int, int], max_pixels: int, op: str) -> tuple[int, int]:
    if size[0] * size[1] > max_pixels:
        raise PermanentError(f"{op} would make {size[0]}x{size[1]} pixels, over the limit "
                             f"of {max_pixels} (AJS_IMAGE_MAX_PIXELS)")
    return size


def apply(img: Image.Image, op: Operation, max_pixels: int) -> Image.Image:
    w, h = img.size
    if op.op == "resize":
        size = _resize_size(op, w, h)
        return img.resize(_check(size, max_pixels, "resize"), Image.Resampling.LANCZOS)
    if op.op == "thumbnail":
        # In place: a copy first would hold the full-size image twice. The pipeline never
        # looks at an operation's input again.
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


def transform(data: bytes | IO[bytes], payload: ImagePayload, max_pixels: int
              ) -> tuple[bytes, tuple[int, int]]:
    img = decode(data, max_pixels)
    for op in payload.operations:
        img = apply(img, op, max_pixels)
    return encode(img, payload.format, payload.quality), img.size
