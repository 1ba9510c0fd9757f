"""report_generation end to end: the built-in job activity report over real jobs in
PostgreSQL, and a table report, rendered, uploaded to S3 (moto) and fetched back through
the presigned URL in the result."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import pytest

from shared.settings import Settings
from tests.support import job_api
from tests.support.aws_moto import Moto, use_moto


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Moto:
    return use_moto(monkeypatch)


@pytest.fixture
def bucket(aws: Moto) -> str:
    return aws.new_bucket()


@pytest.fixture
def settings(settings: Settings, aws: Moto, bucket: str) -> Settings:
    return settings.model_copy(update={**aws.settings(), "reports_bucket": bucket})


def _fetch(url: str) -> httpx.Response:
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, r.text
    return r


async def test_job_activity_report_counts_what_our_jobs_did(api: Any, start_worker: Any,
                                                            bucket: str) -> None:
    activity = [await job_api.create(api, "noop", {}) for _ in range(2)]
    activity.append(await job_api.create(api, "flaky", {"fail_times": 1}))
    activity.append(await job_api.create(api, "flaky", {"fail_times": 1, "permanent": True}))
    await start_worker()
    for job_id in activity:
        await job_api.finished(api, job_id)

    as_csv = await job_api.create(api, "report_generation", {
        "report": "job_activity", "format": "csv", "hours": 1,
        "destination": f"s3://{bucket}/activity.csv"})
    as_html = await job_api.create(api, "report_generation", {"hours": 1, "expires_in": 600})
    csv_job = await job_api.finished(api, as_csv)
    assert csv_job["status"] == "COMPLETED", csv_job["last_error"]
    result = csv_job["result"]
    assert result["uri"] == f"s3://{bucket}/activity.csv"
    rows = {r["job_type"]: r for r in csv.DictReader(io.StringIO(_fetch(result["url"]).text))}
    noop, flaky = rows["noop"], rows["flaky"]
    assert (noop["created"], noop["attempts"], noop["completed"], noop["failed"]) == (
        "2", "2", "2", "0")
    assert noop["success_rate"] == "1.0"
    assert float(noop["mean_seconds"]) >= 0 and float(noop["max_seconds"]) >= 0
    # One flaky job failed once then completed; the other failed for good at once.
    assert (flaky["created"], flaky["attempts"], flaky["completed"], flaky["retried"],
            flaky["failed"]) == ("2", "3", "1", "1", "1")
    assert flaky["success_rate"] == "0.5"

    html_job = await job_api.finished(api, as_html)
    assert html_job["status"] == "COMPLETED", html_job["last_error"]
    assert html_job["result"]["uri"] == f"s3://{bucket}/reports/{as_html}.html"
    assert "X-Amz-Expires=600" in html_job["result"]["url"]
    page = _fetch(html_job["result"]["url"])
    assert page.headers["content-type"].startswith("text/html")
    assert "<h1>Job activity" in page.text
    assert "<td>flaky</td><td>2</td><td>3</td>" in page.text.replace("\n", "").replace(
        "        ", "")
    assert "50.0%" in page.text


async def test_table_report_escapes_what_the_caller_gave(api: Any, start_worker: Any) -> None:
    job_id = await job_api.create(api, "report_generation", {
        "report": "table", "title": "Orders <Q3>", "columns": ["id", "note"],
        "rows": [{"id": 1, "note": "<script>alert(1)</script>", "ignored": "x"},
                 {"id": 2}]})
    await start_worker()
    job = await job_api.finished(api, job_id)
    assert job["status"] == "COMPLETED", job["last_error"]
    assert job["result"]["rows"] == 2
    page = _fetch(job["result"]["url"]).text
    assert "<title>Orders &lt;Q3&gt;</title>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert "ignored" not in page


async def test_report_without_any_destination_is_permanent(api: Any, start_worker: Any
                                                           ) -> None:
    await start_worker(reports_bucket="")
    job = await job_api.finished(api, await job_api.create(api, "report_generation", {}))
    assert job["status"] == "FAILED"
    assert job["attempts"] == 1
    assert "AJS_REPORTS_BUCKET is not set" in job["last_error"]


BAD = [
    ({"report": "sales"}, ["report"]),
    ({"format": "pdf"}, ["format"]),
    ({"hours": 0}, ["hours"]),
    ({"since": "2026-01-02T00:00:00"}, ["since"]),  # no time zone
    ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, []),
    ({"report": "table"}, []),
    ({"report": "table", "rows": [1]}, ["rows", 0]),
    ({"destination": "s3://x"}, ["destination"]),
    ({"expires_in": 0}, ["expires_in"]),
]


async def test_bad_report_payloads_get_422_naming_the_field(api: Any) -> None:
    for payload, loc in BAD:
        locs = await job_api.refused(api, "report_generation", payload)
        assert ["body", "payload", *loc] in locs, (payload, locs)
