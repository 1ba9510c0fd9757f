"""image_processing end to end: images made here with Pillow, put in S3 (moto), run by a
real worker, and the output's format, size and pixels checked; bombs and corrupt files
fail permanently while the worker carries on."""

from __future__ import annotations

import asyncio
import contextlib
import io
import struct
import sys
import zlib
from typing import Any

import pytest
from PIL import Image

from shared.job_types.aws import AwsClients
from shared.settings import Settings
from tests.support import job_api
from tests.support.aws_moto import Moto, use_moto
from tests.support.memory import kib, reset_peak
from tests.support.waits import eventually

RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Moto:
    return use_moto(monkeypatch)


@pytest.fixture
def settings(settings: Settings, aws: Moto) -> Settings:
    return settings.model_copy(update=aws.settings())


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _halves(size: tuple[int, int] = (200, 100)) -> Image.Image:
    """Left half red, right half blue."""
    img = Image.new("RGB", size, RED)
    img.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return img


def _bomb_png(width: int, height: int) -> bytes:
    """A real PNG from Pillow whose header then claims width x height pixels: a few
    hundred bytes that would decode to gigabytes."""
    data = bytearray(_encode(Image.new("1", (8, 8)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


async def test_operations_run_in_order_and_pixels_land_in_s3(api: Any, start_worker: Any,
                                                             aws: Moto) -> None:
    bucket = aws.new_bucket()
    source = aws.put(bucket, "in/halves.png", _encode(_halves(), "PNG"))
    photo = aws.put(bucket, "in/photo.jpg", _encode(_halves((400, 300)), "JPEG"))
    crop = await job_api.create(api, "image_processing", {
        "source": source, "format": "png", "destination": f"s3://{bucket}/out/red.png",
        "operations": [{"op": "crop", "left": 0, "top": 0, "right": 100, "bottom": 100},
                       {"op": "resize", "width": 50, "height": 40},
                       {"op": "grayscale"}]})
    thumb = await job_api.create(api, "image_processing", {
        "source": photo, "format": "webp", "quality": 80,
        "destination": f"s3://{bucket}/out/thumb.webp",
        "operations": [{"op": "thumbnail", "width": 100, "height": 100},
                       {"op": "rotate", "degrees": 90}]})
    jpeg = await job_api.create(api, "image_processing", {
        "source": source, "format": "jpeg", "quality": 90,
        "destination": f"s3://{bucket}/out/wide.jpg",
        "operations": [{"op": "resize", "width": 100}]})
    handle = await start_worker()

    job = await job_api.finished(api, crop)
    assert job["status"] == "COMPLETED", job["last_error"]
    assert job["result"]["operations"] == ["crop", "resize", "grayscale"]
    red = _open(aws.get(f"s3://{bucket}/out/red.png"))
    assert (red.format, red.mode, red.size) == ("PNG", "L", (50, 40))
    assert red.getextrema() == (76, 76)  # pure red in luma: 0.299 * 255

    job = await job_api.finished(api, thumb)
    assert job["status"] == "COMPLETED", job["last_error"]
    small = _open(aws.get(f"s3://{bucket}/out/thumb.webp"))
    # 400x300 fits 100x100 as 100x75; rotated a quarter turn counter-clockwise.
    assert (small.format, small.size) == ("WEBP", (75, 100))
    assert (job["result"]["width"], job["result"]["height"]) == (75, 100)
    rgb = small.convert("RGB")
    top, bottom = rgb.getpixel((37, 10)), rgb.getpixel((37, 90))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[2] > 200 and top[0] < 60  # the blue right half is now on top
    assert bottom[0] > 200 and bottom[2] < 60

    job = await job_api.finished(api, jpeg)
    assert job["status"] == "COMPLETED", job["last_error"]
    wide = _open(aws.get(f"s3://{bucket}/out/wide.jpg"))
    assert (wide.format, wide.size) == ("JPEG", (100, 50))  # height kept in proportion

    # The three jobs shared one set of AWS clients, made once for this worker.
    clients = handle.worker.resources["aws"]
    assert isinstance(clients, AwsClients)
    assert clients.s3() is clients.s3()


async def test_bombs_and_corrupt_files_fail_permanently_and_the_worker_goes_on(
        api: Any, start_worker: Any, aws: Moto) -> None:
    bucket = aws.new_bucket()
    good = _encode(_halves(), "JPEG")
    inputs = {
        "bomb.png": _bomb_png(100_000, 100_000),
        "big.png": _encode(_halves((300, 200)), "PNG"),  # over this worker's 50,000 px
        "truncated.jpg": good[: len(good) // 2],
        "noise.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "text.jpg": b"this is not an image at all",
    }
    expected = {
        "bomb.png": "decompression bomb refused",
        "big.png": "decompression bomb refused: the image claims 300x200 = 60000 pixels",
        "truncated.jpg": "corrupt or truncated image",
        "noise.png": "not an image Pillow can read",
        "text.jpg": "not an image Pillow can read",
    }
    jobs = {}
    for name, data in inputs.items():
        uri = aws.put(bucket, f"in/{name}", data)
        jobs[name] = await job_api.create(api, "image_processing", {
            "source": uri, "format": "png", "destination": f"s3://{bucket}/out/{name}"})
    await start_worker(image_max_pixels=50_000)
    for name, job_id in jobs.items():
        job = await job_api.finished(api, job_id)
        assert job["status"] == "FAILED", name
        assert job["attempts"] == 1, (name, job["last_error"])
        assert expected[name] in job["last_error"], (name, job["last_error"])

    after = await job_api.create(api, "image_processing", {
        "source": aws.put(bucket, "in/fine.jpg", good), "format": "png",
        "destination": f"s3://{bucket}/out/fine.png",
        "operations": [{"op": "thumbnail", "width": 20, "height": 20}]})
    job = await job_api.finished(api, after)
    assert job["status"] == "COMPLETED", job["last_error"]
    assert _open(aws.get(f"s3://{bucket}/out/fine.png")).size == (20, 10)


BAD = [
    ({"source": "https://x.example/a.png", "format": "png", "destination": "s3://bkt/o"},
     ["source"]),
    ({"source": "s3://bkt/a.png", "format": "gif", "destination": "s3://bkt/o"}, ["format"]),
    ({"source": "s3://bkt/a.png", "format": "png"}, ["destination"]),
    ({"source": "s3://bkt/a.png", "format": "png", "destination": "s3://bkt/o",
      "operations": [{"op": "blur"}]}, ["operations", 0]),
    ({"source": "s3://bkt/a.png", "format": "png", "destination": "s3://bkt/o",
      "operations": [{"op": "resize"}]}, ["operations", 0]),
    ({"source": "s3://bkt/a.png", "format": "png", "destination": "s3://bkt/o",
      "operations": [{"op": "crop", "left": 10, "top": 0, "right": 5, "bottom": 5}]},
     ["operations", 0]),
    ({"source": "s3://bkt/a.png", "format": "png", "destination": "s3://bkt/o",
      "operations": [{"op": "thumbnail", "width": 0, "height": 10}]},
     ["operations", 0, "width"]),
    ({"source": "s3://bkt/a.png", "format": "jpeg", "quality": 101,
      "destination": "s3://bkt/o"}, ["quality"]),
]


async def test_bad_image_payloads_get_422_naming_the_field(api: Any) -> None:
    for payload, loc in BAD:
        locs = await job_api.refused(api, "image_processing", payload)
        assert ["body", "payload", *loc] in locs, (payload, locs)


# --- the worker-wide memory budget ------------------------------------------------------------

SIDE = 6300  # 39.7 M pixels, under the 40 M limit: 160 MB decoded (4 bytes a pixel)
# Peak RSS growth allowed for a worker decoding eight of those at once: the default budget
# (512 MiB, sized for a 1 GiB worker). Without one, eight at once took 2.8-3.0 GiB.
BUDGET_MIB = 512
SETTLED_MIB = 64  # RSS over the start once the jobs are done (freed memory handed back)


def _big_png() -> bytes:
    """A 6300x6300 PNG of a few hundred KiB: bands of colour compress well."""
    img = Image.new("RGB", (SIDE, SIDE), RED)
    for i in range(0, SIDE, 700):
        img.paste((i % 256, 90, 200), (i, 0, i + 350, SIDE))
    data = _encode(img, "PNG")
    img.close()
    return data


async def test_eight_large_images_at_once_stay_within_the_memory_budget(
        api: Any, spawn: Any, aws: Moto) -> None:
    """A real worker process (8 slots) gets eight jobs on one 6300x6300 PNG at once. Each
    waits for its share of the budget before decoding, so the worker's peak RSS grows by
    less than the budget, and once they are done its RSS comes back near the start."""
    bucket = aws.new_bucket()
    big = aws.put(bucket, "in/big.png", await asyncio.to_thread(_big_png))
    small = aws.put(bucket, "in/small.png", _encode(_halves(), "PNG"))
    proc = await spawn("-m", "worker", worker_concurrency=8)
    thumb = [{"op": "thumbnail", "width": 256, "height": 256}]
    warm = await job_api.create(api, "image_processing", {
        "source": small, "format": "jpeg", "operations": thumb,
        "destination": f"s3://{bucket}/out/warm.jpg"})
    assert (await job_api.finished(api, warm, timeout=60))["status"] == "COMPLETED"

    before = kib(proc.pid, "VmRSS")
    reset_peak(proc.pid)
    jobs = [await job_api.create(api, "image_processing", {
        "source": big, "format": "jpeg", "operations": thumb,
        "destination": f"s3://{bucket}/out/{i}.jpg"}) for i in range(8)]
    done = [await job_api.finished(api, job_id, timeout=120) for job_id in jobs]
    peak = kib(proc.pid, "VmHWM")
    growth_mib = (peak - before) / 1024

    async def settled() -> bool:
        return (kib(proc.pid, "VmRSS") - before) / 1024 < SETTLED_MIB

    with contextlib.suppress(AssertionError):  # the figures are printed either way
        await eventually(settled, 10, interval=0.2, what="the worker's RSS to settle")
    over = (kib(proc.pid, "VmRSS") - before) / 1024
    print(f"\neight {SIDE}x{SIDE} images: worker RSS {before / 1024:.0f} MiB, peak growth "
          f"{growth_mib:.0f} MiB (bound {BUDGET_MIB} MiB), after {over:.0f} MiB over the start",
          file=sys.stderr)
    for job in done:
        assert job["status"] == "COMPLETED", job["last_error"]
        assert (job["result"]["width"], job["result"]["height"]) == (256, 256)
    assert growth_mib < BUDGET_MIB
    assert over < SETTLED_MIB


async def test_an_image_larger_than_the_whole_budget_fails_permanently(
        api: Any, start_worker: Any, aws: Moto) -> None:
    bucket = aws.new_bucket()
    source = aws.put(bucket, "in/mid.png", _encode(_halves((1000, 1000)), "PNG"))
    job_id = await job_api.create(api, "image_processing", {
        "source": source, "format": "png", "destination": f"s3://{bucket}/out/mid.png"})
    await start_worker(image_memory_budget_bytes=4 * 1024 * 1024)
    job = await job_api.finished(api, job_id)
    assert (job["status"], job["attempts"]) == ("FAILED", 1)
    assert "more than this worker's whole image budget of 4 MiB" in job["last_error"]


async def test_the_budget_serves_waiters_in_order_and_a_cancelled_wait_takes_nothing(
        ) -> None:
    from shared.job_types.image_processing.budget import MemoryBudget

    budget = MemoryBudget(100)
    assert await budget.acquire(60) == 60
    big = asyncio.create_task(budget.acquire(80))
    small = asyncio.create_task(budget.acquire(30))  # would fit, but waits behind big
    gone = asyncio.create_task(budget.acquire(10))
    await asyncio.sleep(0)
    assert not big.done() and not small.done()
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    budget.release(60)
    assert await big == 80
    assert not small.done()
    budget.release(80)
    assert await small == 30
    assert budget.used == 30
    with pytest.raises(ValueError, match="exceed the whole budget"):
        await budget.acquire(101)

    # The head of the line cancelled, and memory freed before its task saw it: the next
    # waiter gets it, and the cancelled one takes nothing.
    head = asyncio.create_task(budget.acquire(90))
    after = asyncio.create_task(budget.acquire(50))
    await asyncio.sleep(0)
    head.cancel()
    await asyncio.sleep(0)  # the cancellation reaches the head's future
    budget.release(30)
    with pytest.raises(asyncio.CancelledError):
        await head
    assert await after == 50
    assert budget.used == 50
