"""GET /jobs/activity: what was created, completed, retried, dead-lettered and cancelled in
the last hour or day, counted from the per-minute table (migration 0005) plus the count
deltas not yet folded into it."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.store.insights import Window, activity, window_bounds
from tests.support.api_checks import create, error_of
from tests.support.waits import eventually

ACTIVITY = "/api/v1/jobs/activity"
ZERO = {"created": 0, "completed": 0, "retried": 0, "dead_lettered": 0, "cancelled": 0}


async def reach(api: Any, ids: list[str], status: str) -> None:
    async def check() -> bool:
        found = [(await api.get(f"/api/v1/jobs/{i}")).json()["status"] for i in ids]
        return found == [status] * len(ids)

    await eventually(check, 20, interval=0.05, what=f"{len(ids)} jobs {status}")


async def read(api: Any, **params: str) -> dict[str, Any]:
    resp = await api.get(ACTIVITY, params=params)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def counts(c: dict[str, Any]) -> dict[str, int]:
    return {k: c[k] for k in ZERO}


async def test_activity_counts_what_ran_before_and_after_the_fold(api, start_worker, store):
    ok = [(await create(api, "noop"))["id"] for _ in range(3)]
    dead = (await create(api, "broken", max_retries=1))["id"]  # fails twice: retried, dead
    later = (await create(api, "noop", scheduled_at=(
        datetime.now(UTC) + timedelta(days=1)).isoformat()))["id"]
    assert (await api.delete(f"/api/v1/jobs/{later}")).status_code == 200
    await start_worker()
    await reach(api, ok, "COMPLETED")
    await reach(api, [dead], "FAILED")

    expected_types = {
        "noop": {**ZERO, "created": 4, "completed": 3, "cancelled": 1, "failure_rate": 0.0},
        "broken": {**ZERO, "created": 1, "retried": 1, "dead_lettered": 1,
                   "failure_rate": 1.0},
    }
    for folded in (False, True):
        if folded:  # the scheduler tick's fold moves the deltas into job_activity
            assert await store.fold_counts() > 0
        for window, buckets in (("1h", 12), ("24h", 24)):
            body = await read(api, window=window)
            assert body["window"] == window and len(body["buckets"]) == buckets
            assert counts(body["totals"]) == {"created": 5, "completed": 3, "retried": 1,
                                              "dead_lettered": 1, "cancelled": 1}
            assert body["totals"]["failure_rate"] == 0.25  # 1 dead of 4 settled
            assert body["by_type"] == expected_types
            # every bucket starts where the previous ended; they add up to the totals
            starts = [datetime.fromisoformat(b["start"]) for b in body["buckets"]]
            step = timedelta(seconds=body["bucket_seconds"])
            assert all(b - a == step for a, b in itertools.pairwise(starts))
            assert datetime.fromisoformat(body["end"]) == starts[-1] + step
            assert {k: sum(b[k] for b in body["buckets"]) for k in ZERO} == counts(
                body["totals"])
            # all of it happened just now: in the current bucket
            assert counts(body["buckets"][-1]) == counts(body["totals"])
            finished = 3 + 1 + 1
            assert body["buckets"][-1]["finished_per_minute"] == (
                finished / (body["bucket_seconds"] / 60))
            assert body["throughput_per_minute"] == finished / (buckets * body[
                "bucket_seconds"] / 60)
    assert await store.fold_counts() == 0  # nothing left to fold: nothing counted twice
    assert counts((await read(api))["totals"])["created"] == 5


async def test_activity_of_a_bound_key_is_its_own_namespace(api, api_as, start_worker):
    tenant = await api_as("jobs:write", namespace="acme")
    ids = [(await create(tenant, "noop"))["id"] for _ in range(2)]
    ids.append((await create(api, "noop"))["id"])  # unbound: no namespace
    await start_worker()
    await reach(api, ids, "COMPLETED")

    mine = await read(tenant)
    assert mine["namespace"] == "acme"
    assert counts(mine["totals"]) == {**ZERO, "created": 2, "completed": 2}
    assert counts((await read(tenant, namespace="acme"))["totals"])["created"] == 2
    error = error_of(await tenant.get(ACTIVITY, params={"namespace": "other"}), 403)
    assert error["details"][0]["loc"] == ["query", "namespace"]
    # an unbound key sees every namespace, or the one it names
    assert counts((await read(api))["totals"])["created"] == 3
    assert counts((await read(api, namespace="acme"))["totals"])["created"] == 2
    assert counts((await read(api, namespace="nobody"))["totals"]) == ZERO


async def test_bad_activity_requests_are_422(api):
    for params in ({"window": "2h"}, {"window": ""}, {"namespace": "Not Valid"},
                   {"namespace": "x" * 64}):
        error = error_of(await api.get(ACTIVITY, params=params), 422)
        assert error["details"][0]["loc"][:2] == ["query", next(iter(params))]
    # /jobs/activity is not a job id: another method is a 405, not a 422 about the id
    assert (await api.delete(ACTIVITY)).status_code == 405


async def test_buckets_are_aligned_to_their_length(db):
    now = datetime(2026, 11, 29, 13, 7, 42, tzinfo=UTC)
    start, end, bucket, n = window_bounds(Window.hour, now)
    assert (start, end, bucket, n) == (datetime(2026, 11, 29, 12, 10, tzinfo=UTC),
                                       datetime(2026, 11, 29, 13, 10, tzinfo=UTC),
                                       timedelta(minutes=5), 12)
    start, end, bucket, n = window_bounds(Window.day, now)
    assert (start, end) == (datetime(2026, 11, 28, 14, tzinfo=UTC),
                            datetime(2026, 11, 29, 14, tzinfo=UTC))
    # rows of another minute land in their own bucket; older ones are outside the window
    await db.execute("""
        INSERT INTO job_activity (minute, namespace, job_type, created, completed)
        VALUES ('2026-11-29 12:11+00', '*', 'noop', 1, 1),
               ('2026-11-29 13:05+00', '*', 'noop', 2, 0),
               ('2026-11-29 12:09+00', '*', 'noop', 100, 100)""")
    body = await activity(db, Window.hour, now=now)
    assert [b.created for b in body.buckets] == [1] + [0] * 10 + [2]
    assert body.totals.completed == 1
