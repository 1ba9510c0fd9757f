"""Where jobs may write in S3 (AJS_S3_WRITE_PREFIXES): refused at create time with a 422
naming the field, refused again by the worker before any work, and by default only the
reports bucket. S3 is moto; buckets are made per test."""

from __future__ import annotations

from typing import Any

import httpx
import pydantic
import pytest

from shared.settings import Settings
from tests.conftest import admin_headers
from tests.support import job_api
from tests.support.aws_moto import Moto, use_moto

PREFIX = job_api.PREFIX
RECORDS = [{"k": "a", "v": 1}, {"k": "b", "v": 2}]


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Moto:
    return use_moto(monkeypatch)


@pytest.fixture
def buckets(aws: Moto) -> tuple[str, str]:
    return aws.new_bucket(), aws.new_bucket()


@pytest.fixture
def settings(settings: Settings, aws: Moto, buckets: tuple[str, str]) -> Settings:
    allowed, _ = buckets
    return settings.model_copy(update={**aws.settings(),
                                       "s3_write_prefixes": [f"s3://{allowed}/out/"]})


def _data(destination: str) -> dict[str, Any]:
    return {"source": RECORDS, "format": "jsonl", "destination": destination}


async def test_destinations_outside_the_allowed_prefixes_get_422_naming_the_field(
        api: httpx.AsyncClient, buckets: tuple[str, str]) -> None:
    allowed, other = buckets
    refused = [
        ("data_processing", _data(f"s3://{other}/out/x.jsonl")),
        ("data_processing", _data(f"s3://{allowed}/x.jsonl")),
        ("data_processing", _data(f"s3://{allowed}/outside/x.jsonl")),  # not under out/
        ("image_processing", {"source": f"s3://{allowed}/in.png", "format": "png",
                              "destination": f"s3://{other}/out/y.png"}),
        ("report_generation", {"destination": f"s3://{other}/out/r.html"}),
    ]
    for job_type, payload in refused:
        r = await api.post(f"{PREFIX}/jobs", json={"job_type": job_type, "payload": payload})
        assert r.status_code == 422, (job_type, payload, r.text)
        error = r.json()["error"]
        assert ["body", "payload", "destination"] in [d["loc"] for d in error["details"]]
        assert "AJS_S3_WRITE_PREFIXES" in error["message"]
    assert (await api.get(f"{PREFIX}/jobs")).json()["items"] == []  # nothing was created
    await job_api.create(api, "data_processing", _data(f"s3://{allowed}/out/ok.jsonl"))


async def test_the_worker_refuses_a_destination_its_settings_do_not_allow(
        api: httpx.AsyncClient, start_worker: Any, aws: Moto, buckets: tuple[str, str]
        ) -> None:
    """The API allowed it (settings differ, or changed since): the worker still refuses,
    permanently, and the object there is left as it was."""
    allowed, _ = buckets
    target = aws.put(allowed, "out/keep.jsonl", b"precious\n")
    job_id = await job_api.create(api, "data_processing", _data(target))
    await start_worker(s3_write_prefixes=[f"s3://{allowed}/elsewhere/"])
    job = await job_api.finished(api, job_id)
    assert (job["status"], job["attempts"]) == ("FAILED", 1)
    assert "outside the locations jobs may write to" in job["last_error"]
    assert aws.get(target) == b"precious\n"


async def test_by_default_only_the_reports_bucket_is_writable(
        settings: Settings, start_worker: Any, aws: Moto, buckets: tuple[str, str]) -> None:
    from functions.api.app import create_app

    reports, other = buckets
    plain = settings.model_copy(update={"s3_write_prefixes": [], "reports_bucket": reports})
    app = create_app(plain)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api",
                                 headers=await admin_headers(settings)) as api:
        try:
            # Unset: the API does not check (it may not know the reports bucket)...
            inside = await job_api.create(api, "data_processing",
                                          _data(f"s3://{reports}/any/where.jsonl"))
            outside = await job_api.create(api, "data_processing",
                                           _data(f"s3://{other}/x.jsonl"))
            await start_worker(s3_write_prefixes=[], reports_bucket=reports)
            # ...and the worker writes into the reports bucket alone.
            done = await job_api.finished(api, inside)
            assert done["status"] == "COMPLETED", done["last_error"]
            assert aws.get(f"s3://{reports}/any/where.jsonl").count(b"\n") == 2
            refused = await job_api.finished(api, outside)
            assert (refused["status"], refused["attempts"]) == ("FAILED", 1)
            assert f"s3://{reports}/" in refused["last_error"]
        finally:
            await app.state.stores.close()


def test_write_prefixes_are_checked_when_settings_load() -> None:
    s = Settings(s3_write_prefixes="s3://my-bucket/out/, s3://other-bucket")  # type: ignore[arg-type]
    assert s.s3_write_prefixes == ["s3://my-bucket/out/", "s3://other-bucket"]
    with pytest.raises(pydantic.ValidationError, match="not an s3://bucket/prefix"):
        Settings(s3_write_prefixes="https://my-bucket/out/")  # type: ignore[arg-type]
