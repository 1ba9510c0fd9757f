"""GET /jobs filtered by namespace, creation time and id (a full id or a hex prefix), in
combination with status, type and the cursor."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support.api_checks import create, error_of, locs

JOBS = "/api/v1/jobs"


async def ids(api: Any, **params: Any) -> list[str]:
    resp = await api.get(JOBS, params=params)
    assert resp.status_code == 200, resp.text
    return [j["id"] for j in resp.json()["items"]]


async def all_pages(api: Any, **params: Any) -> list[str]:
    found: list[str] = []
    cursor = None
    while True:
        resp = await api.get(JOBS, params={**params, **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200, resp.text
        found += [j["id"] for j in resp.json()["items"]]
        cursor = resp.json()["next_cursor"]
        if cursor is None:
            return found


async def test_jobs_are_filtered_by_namespace(api, api_as):
    acme = await api_as("jobs:write", namespace="acme")
    other = await api_as("jobs:write", namespace="other")
    a = (await create(acme, "noop"))["id"]
    o = (await create(other, "noop"))["id"]
    u = (await create(api, "noop"))["id"]

    assert await ids(api) == [u, o, a]
    assert await ids(api, namespace="acme") == [a]
    assert await ids(api, namespace="other", job_type="noop", status="QUEUED") == [o]
    assert await ids(api, namespace="nobody") == []
    # a bound key lists its own, and may name its own namespace, but not another's
    assert await ids(acme) == [a] and await ids(acme, namespace="acme") == [a]
    error = error_of(await acme.get(JOBS, params={"namespace": "other"}), 403)
    assert locs(error) == [["query", "namespace"]] and "acme" in error["message"]
    error_of(await api.get(JOBS, params={"namespace": "Bad Name"}), 422)


async def test_jobs_are_filtered_by_creation_time(api, db):
    first = await create(api, "noop")
    second = await create(api, "noop")
    third = await create(api, "noop")
    # spread the creation times an hour apart (created_at is the transaction's clock)
    base = datetime.now(UTC) - timedelta(hours=3)
    for hours, job in enumerate((first, second, third)):
        await db.execute("UPDATE jobs SET created_at = $1 WHERE id = $2",
                         base + timedelta(hours=hours), uuid.UUID(job["id"]))
    t1 = base + timedelta(minutes=30)
    t2 = base + timedelta(minutes=90)

    assert await ids(api, created_after=t1.isoformat()) == [third["id"], second["id"]]
    assert await ids(api, created_before=t2.isoformat()) == [second["id"], first["id"]]
    assert await ids(api, created_after=t1.isoformat(), created_before=t2.isoformat()) == [
        second["id"]]
    # exact bounds: after is inclusive, before exclusive
    exact = (base + timedelta(hours=1)).isoformat()
    assert await ids(api, created_after=exact) == [third["id"], second["id"]]
    assert await ids(api, created_before=exact) == [first["id"]]
    # without an offset: UTC
    naive = (base + timedelta(hours=1, minutes=30)).replace(tzinfo=None).isoformat()
    assert await ids(api, created_after=naive) == [third["id"]]
    # with status, type and the cursor, page by page
    assert await all_pages(api, created_after=base.isoformat(), status="QUEUED",
                           job_type="noop", limit=1) == [third["id"], second["id"],
                                                         first["id"]]
    assert await ids(api, created_after=t1.isoformat(), status="COMPLETED") == []


async def test_jobs_are_found_by_id_or_its_first_digits(api, db):
    made = [(await create(api, "noop"))["id"] for _ in range(5)]
    target = made[2]
    assert await ids(api, id=target) == [target]
    assert await ids(api, id=target.upper()) == [target]
    assert await ids(api, id=target.replace("-", "")) == [target]
    for digits in (8, 9, 13, 20):  # 9 and 13 cross a hyphen
        found = await ids(api, id=target[:digits])
        assert target in found and all(i.startswith(target[:digits]) for i in found)
    assert await ids(api, id=target, status="COMPLETED") == []
    assert await ids(api, id=target, job_type="broken") == []
    assert await ids(api, id=str(uuid.uuid4())) == []
    # a 4-digit prefix: every job starting with it, and only those
    prefix = target[:4]
    assert set(await all_pages(api, id=prefix, limit=1)) == {
        i for i in made if i.startswith(prefix)}


async def test_bad_filters_are_422(api):
    await create(api, "noop")
    now = datetime.now(UTC)
    bad = [
        ({"id": "abc"}, ["query", "id"]),  # too short
        ({"id": "abcz"}, ["query", "id"]),  # not hex
        ({"id": "a" * 37}, ["query", "id"]),  # too long
        ({"id": "----"}, ["query", "id"]),  # no digits
        ({"id": "0" * 33}, ["query", "id"]),  # more digits than an id has
        ({"created_after": "yesterday"}, ["query", "created_after"]),
        # A number is not read as seconds since the epoch (schemathesis found this).
        ({"created_after": "3.5964499657570315e-176"}, ["query", "created_after"]),
        ({"created_before": "1700000000"}, ["query", "created_before"]),
        ({"created_before": "1900-01-01T00:00:00Z"}, ["query", "created_before"]),
        ({"created_after": "9999-01-01T00:00:00Z"}, ["query", "created_after"]),
        ({"created_after": now.isoformat(), "created_before": now.isoformat()},
         ["query", "created_after"]),
    ]
    for params, loc in bad:
        error = error_of(await api.get(JOBS, params=params), 422)
        assert loc in locs(error), (params, locs(error))
