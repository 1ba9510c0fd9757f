"""One Idempotency-Key namespace across POST /jobs and POST /jobs/batch: a key used on one
endpoint and then on the other is a 409, never a second job."""

from __future__ import annotations

import pytest

from tests.support.api_checks import error_of, job_count, locs, redis_state
from tests.support.job_api import PREFIX

JOBS = f"{PREFIX}/jobs"
JOB = {"job_type": "noop", "payload": {"tag": "a"}}


@pytest.mark.parametrize("batch_size", [1, 3])
async def test_a_single_create_key_reused_on_the_batch_endpoint_is_409(api, db, namespace,
                                                                        batch_size):
    key = {"Idempotency-Key": "order-17"}
    first = await api.post(JOBS, json=JOB, headers=key)
    assert first.status_code == 201
    before = await redis_state(namespace)
    resp = await api.post(f"{JOBS}/batch", json={"jobs": [JOB] * batch_size}, headers=key)
    error = error_of(resp, 409)
    assert error["code"] == "idempotency_conflict"
    assert locs(error) == [["header", "Idempotency-Key"]]
    assert await job_count(db) == 1
    assert await redis_state(namespace) == before
    replay = await api.post(JOBS, json=JOB, headers=key)  # the original still replays
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]


@pytest.mark.parametrize("batch_size", [1, 3])
async def test_a_batch_key_reused_on_the_single_endpoint_is_409(api, db, namespace,
                                                                 batch_size):
    key = {"Idempotency-Key": "order-18"}
    first = await api.post(f"{JOBS}/batch", json={"jobs": [JOB] * batch_size}, headers=key)
    assert first.status_code == 201
    before = await redis_state(namespace)
    error = error_of(await api.post(JOBS, json=JOB, headers=key), 409)
    assert error["code"] == "idempotency_conflict"
    assert await job_count(db) == batch_size
    assert await redis_state(namespace) == before
    replay = await api.post(f"{JOBS}/batch", json={"jobs": [JOB] * batch_size}, headers=key)
    assert replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert [j["id"] for j in replay.json()["jobs"]] == [j["id"] for j in first.json()["jobs"]]
