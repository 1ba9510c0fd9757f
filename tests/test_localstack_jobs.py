"""The job types against LocalStack's S3 and SES: created through the API, run by a real
worker, and their artifacts and mail found where LocalStack keeps them. (moto checks the
same paths quickly in the job type tests; LocalStack is the one users test against.)"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import secrets
import urllib.request
from typing import Any

import pytest
from PIL import Image

from shared.settings import Settings
from tests.support import job_api
from tests.support.localstack import LocalStack

# The first LocalStack test of a session may build LocalStack's venv (about a minute).
pytestmark = pytest.mark.timeout(300)

SENDER = "jobs@example.com"


@pytest.fixture
async def bucket(aws_env: LocalStack) -> str:
    return await asyncio.to_thread(aws_env.new_bucket)


@pytest.fixture
def settings(settings: Settings, aws_env: LocalStack, bucket: str) -> Settings:
    return settings.model_copy(update={**aws_env.settings(), "email_backend": "ses",
                                       "email_sender": SENDER, "reports_bucket": bucket})


def _put(ls: LocalStack, bucket: str, key: str, data: bytes) -> str:
    ls.client("s3").put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"


def _get(ls: LocalStack, uri: str) -> tuple[bytes, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    obj = ls.client("s3").get_object(Bucket=bucket, Key=key)
    return obj["Body"].read(), obj["ContentType"]


async def _completed(api: Any, start_worker: Any, job_type: str, payload: dict[str, Any]
                     ) -> dict[str, Any]:
    job_id = await job_api.create(api, job_type, payload)
    await start_worker()
    job = await job_api.finished(api, job_id, timeout=60)
    assert job["status"] == "COMPLETED", job["last_error"]
    result: dict[str, Any] = job["result"]
    return result


async def test_data_job_reads_csv_from_s3_and_writes_the_result_to_s3(
        api: Any, start_worker: Any, aws_env: LocalStack, bucket: str) -> None:
    rows = [{"region": r, "amount": str(a)} for r, a in
            [("eu", 10), ("us", 5), ("eu", 7), ("us", 1), ("ap", 3)]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["region", "amount"])
    writer.writeheader()
    writer.writerows(rows)
    source = await asyncio.to_thread(_put, aws_env, bucket, "in/sales.csv",
                                     buf.getvalue().encode())
    destination = f"s3://{bucket}/out/by-region.jsonl"

    result = await _completed(api, start_worker, "data_processing", {
        "source": source, "format": "csv", "output_format": "jsonl",
        "destination": destination,
        "operations": [
            {"op": "filter", "field": "amount", "cmp": "ge", "value": 3},
            {"op": "group_by", "keys": ["region"],
             "aggregates": [{"fn": "count"}, {"fn": "sum", "field": "amount"}]}]})

    assert result["rows_in"] == 5 and result["rows_out"] == 3
    data, _ = await asyncio.to_thread(_get, aws_env, destination)
    got = sorted((json.loads(line) for line in data.decode().splitlines()),
                 key=lambda r: r["region"])
    assert got == [{"region": "ap", "count": 1, "sum_amount": 3},
                   {"region": "eu", "count": 2, "sum_amount": 17},
                   {"region": "us", "count": 1, "sum_amount": 5}]


async def test_report_job_writes_html_to_the_reports_bucket_and_presigns_it(
        api: Any, start_worker: Any, aws_env: LocalStack, bucket: str) -> None:
    title = "Quarter " + secrets.token_hex(3)
    result = await _completed(api, start_worker, "report_generation", {
        "report": "table", "format": "html", "title": title,
        "rows": [{"team": "infra", "jobs": 12}, {"team": "data", "jobs": 7}]})

    assert result["uri"].startswith(f"s3://{bucket}/")
    stored, content_type = await asyncio.to_thread(_get, aws_env, result["uri"])
    assert content_type.startswith("text/html")
    html = stored.decode()
    assert title in html and "infra" in html and "data" in html

    def download() -> bytes:
        with urllib.request.urlopen(result["url"], timeout=10) as response:
            body: bytes = response.read()
            return body

    assert await asyncio.to_thread(download) == stored  # the presigned URL serves it


async def test_image_job_transforms_an_s3_image_into_s3(
        api: Any, start_worker: Any, aws_env: LocalStack, bucket: str) -> None:
    picture = Image.new("RGB", (64, 32), (200, 30, 30))
    raw = io.BytesIO()
    picture.save(raw, format="PNG")
    source = await asyncio.to_thread(_put, aws_env, bucket, "img/in.png", raw.getvalue())
    destination = f"s3://{bucket}/img/thumb.webp"

    result = await _completed(api, start_worker, "image_processing", {
        "source": source, "destination": destination, "format": "webp", "quality": 80,
        "operations": [{"op": "thumbnail", "width": 16, "height": 16},
                       {"op": "grayscale"}]})

    assert (result["width"], result["height"]) == (16, 8)
    data, content_type = await asyncio.to_thread(_get, aws_env, destination)
    assert content_type == "image/webp" and len(data) == result["bytes"]
    with Image.open(io.BytesIO(data)) as out:
        assert out.format == "WEBP" and out.size == (16, 8)
        r, g, b = out.convert("RGB").getpixel((8, 4))  # type: ignore[misc]
        assert abs(r - g) <= 2 and abs(g - b) <= 2  # grey


async def test_email_job_sends_through_ses_recorded_by_localstack(
        api: Any, start_worker: Any, aws_env: LocalStack) -> None:
    await asyncio.to_thread(aws_env.client("ses").verify_email_identity,
                            EmailAddress=SENDER)
    subject = "Welcome " + secrets.token_hex(4)
    result = await _completed(api, start_worker, "email", {
        "to": ["ada@example.com", "alan@example.org"], "cc": "grace@example.net",
        "subject": subject, "body": "Plain text body.", "html": "<p>HTML body.</p>"})
    assert result["backend"] == "ses" and result["recipients"] == 3

    sent = [m for m in await asyncio.to_thread(aws_env.sent_emails)
            if m.get("Subject") == subject]
    assert len(sent) == 1, sent
    mail = sent[0]
    assert mail["Id"] == result["message_id"]
    assert mail["Source"] == SENDER
    assert mail["Destination"]["ToAddresses"] == ["ada@example.com", "alan@example.org"]
    assert mail["Destination"]["CcAddresses"] == ["grace@example.net"]
    assert mail["Body"] == {"text_part": "Plain text body.", "html_part": "<p>HTML body.</p>"}
