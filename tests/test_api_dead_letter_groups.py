"""Dead letters for the console: grouped by type and error (GET /dead-letters/groups), and
redriven by a selection of ids (POST /dead-letters/redrive with ``{"ids": [...]}``)."""

from __future__ import annotations

import uuid
from typing import Any

from shared.store.insights import dead_letter_groups
from tests.support.api_checks import create, error_of, locs, redis_state
from tests.support.waits import eventually

JOBS = "/api/v1/jobs"
DEAD = "/api/v1/dead-letters"
GROUPS = f"{DEAD}/groups"


async def reach(api: Any, ids: list[str], status: str) -> None:
    async def check() -> bool:
        found = [(await api.get(f"{JOBS}/{i}")).json()["status"] for i in ids]
        return found == [status] * len(ids)

    await eventually(check, 20, interval=0.05, what=f"{len(ids)} jobs {status}")


async def dead(api: Any, job_type: str, **fields: Any) -> str:
    return str((await create(api, job_type, max_retries=0, **fields))["id"])


async def groups(api: Any, **params: str) -> dict[str, Any]:
    resp = await api.get(GROUPS, params=params)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def shape(body: dict[str, Any]) -> list[tuple[str, str, int, list[str]]]:
    return [(g["job_type"], g["error"], g["count"], g["sample_ids"]) for g in body["groups"]]


async def test_dead_jobs_are_grouped_by_type_and_error(api, start_worker):
    await start_worker()
    b1, b2, b3 = [await dead(api, "broken", payload={"tag": str(i)}) for i in range(3)]
    f1 = await dead(api, "flaky", payload={"fail_times": 1, "permanent": True})
    d1 = await dead(api, "doomed")
    ok = (await create(api, "noop"))["id"]
    await reach(api, [b1, b2, b3, f1, d1], "FAILED")
    await reach(api, [ok], "COMPLETED")

    body = await groups(api)
    # largest first (ties: the latest failure first); sample ids newest first
    assert shape(body)[0] == ("broken", "ValueError: boom", 3, [b3, b2, b1])
    assert sorted(shape(body)[1:]) == [
        ("doomed", "PermanentError: this job can never succeed", 1, [d1]),
        ("flaky", "PermanentError: attempt 1 refused for good", 1, [f1]),
    ]
    assert (body["total"], body["scanned"], body["complete"]) == (5, 5, True)
    assert all(g["latest_failure_at"] for g in body["groups"])
    assert shape(await groups(api, job_type="flaky")) == [
        ("flaky", "PermanentError: attempt 1 refused for good", 1, [f1])]
    assert (await groups(api, job_type="noop"))["groups"] == []

    # a redriven job leaves its group
    assert (await api.post(f"{DEAD}/{b1}/redrive")).status_code == 200
    assert shape(await groups(api, job_type="broken"))[0][2:] == (2, [b3, b2])


async def test_the_group_key_is_the_first_line_of_the_error_bounded(db, store):
    """Errors written as a worker would (tracebacks after the first line, huge messages):
    the rows are set up directly, as a retention test sets up old rows."""
    await db.execute("""
        INSERT INTO jobs (job_type, payload, priority, status, max_retries, timeout_seconds,
                          last_error, finished_at, attempts)
        VALUES ('webhook', '{}', 5, 'FAILED', 0, 10, E'Timeout: 10 s\\n  at line 1', now(), 1),
               ('webhook', '{}', 5, 'FAILED', 0, 10, E'Timeout: 10 s\\n  at line 9', now(), 1),
               ('webhook', '{}', 5, 'FAILED', 0, 10, NULL, now(), 1),
               ('email', '{}', 5, 'FAILED', 0, 10, $1, now(), 1)""", "x" * 5000)
    body = await dead_letter_groups(db)
    found = [(g.job_type, g.error, g.count) for g in body.groups]
    assert found[0] == ("webhook", "Timeout: 10 s", 2)
    assert sorted(found[1:]) == [("email", "x" * 200, 1), ("webhook", "", 1)]
    assert (body.total, body.scanned, body.complete) == (4, 4, True)


async def test_a_selection_is_redriven_and_the_rest_reported_skipped(api, api_as,
                                                                     start_worker):
    tenant = await api_as("admin", namespace="acme")
    worker = await start_worker()
    a, b, c = [await dead(api, "broken", payload={"tag": t}) for t in "abc"]
    theirs = await dead(tenant, "broken", payload={"tag": "theirs"})
    ok = (await create(api, "noop"))["id"]
    await reach(api, [a, b, c, theirs], "FAILED")
    await reach(api, [ok], "COMPLETED")
    await worker.stop()

    unknown = str(uuid.uuid4())
    resp = await api.post(f"{DEAD}/redrive", json={"ids": [a, b, a, ok, unknown]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"count": 2, "redriven": [a, b], "skipped": [ok, unknown]}
    statuses = {i: (await api.get(f"{JOBS}/{i}")).json()["status"]
                for i in (a, b, c, theirs, ok)}
    assert statuses == {a: "QUEUED", b: "QUEUED", c: "FAILED", theirs: "FAILED",
                        ok: "COMPLETED"}

    # a key bound to a namespace redrives only its own: the others are skipped, unchanged
    resp = await tenant.post(f"{DEAD}/redrive", json={"ids": [c, theirs]})
    assert resp.json() == {"count": 1, "redriven": [theirs], "skipped": [c]}
    assert (await api.get(f"{JOBS}/{c}")).json()["status"] == "FAILED"
    # ids and a type: those of the selection that are of the type
    resp = await api.post(f"{DEAD}/redrive", json={"ids": [c], "job_type": "noop"})
    assert resp.json() == {"count": 0, "redriven": [], "skipped": [c]}
    # the other forms answer as before
    assert (await api.post(f"{DEAD}/redrive", json={"job_type": "broken"})).json() == {
        "count": 1}
    await start_worker()
    await reach(api, [a, b, c, theirs], "FAILED")  # they ran again (and failed again)


async def test_bad_redrive_selections_are_422_and_change_nothing(api, start_worker,
                                                                 namespace):
    worker = await start_worker()
    a = await dead(api, "broken")
    await reach(api, [a], "FAILED")
    await worker.stop()
    before = await redis_state(namespace)
    bad: list[tuple[Any, list[Any]]] = [
        ({"ids": []}, ["body", "ids"]),
        ({"ids": [str(uuid.uuid4()) for _ in range(501)]}, ["body", "ids"]),
        ({"ids": ["not-a-uuid"]}, ["body", "ids", 0]),
        ({"ids": a}, ["body", "ids"]),
        ({"ids": [a], "extra": 1}, ["body", "extra"]),
    ]
    for body, loc in bad:
        error = error_of(await api.post(f"{DEAD}/redrive", json=body), 422)
        assert loc in locs(error), (body, locs(error))
    assert (await api.get(f"{JOBS}/{a}")).json()["status"] == "FAILED"
    assert await redis_state(namespace) == before
    # 500 ids is the most, and is fine
    resp = await api.post(f"{DEAD}/redrive",
                          json={"ids": [a] + [str(uuid.uuid4()) for _ in range(499)]})
    assert resp.status_code == 200 and resp.json()["redriven"] == [a]


async def test_groups_of_a_bound_key_are_its_own(api, api_as, start_worker):
    tenant = await api_as("jobs:write", namespace="acme")
    await start_worker()
    mine = await dead(tenant, "broken")
    other = await dead(api, "broken")
    await reach(api, [mine, other], "FAILED")

    body = await groups(tenant)
    assert shape(body) == [("broken", "ValueError: boom", 1, [mine])]
    assert body["total"] == 1
    assert shape(await groups(api, namespace="acme")) == shape(body)
    assert (await groups(api))["total"] == 2
    error = error_of(await tenant.get(GROUPS, params={"namespace": "other"}), 403)
    assert locs(error) == [["query", "namespace"]]
    reader = await api_as("jobs:read", namespace="acme")
    error_of(await reader.post(f"{DEAD}/redrive", json={"ids": [mine]}), 403)
    for params in ({"job_type": "\x00"}, {"namespace": "UPPER"}):
        error_of(await api.get(GROUPS, params=params), 422)
