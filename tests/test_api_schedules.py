"""/schedules over the real app: create, read (next fire times, last runs), list, pause and
resume, delete; every bad input a 422 naming its field, and nothing stored."""

from __future__ import annotations

import json
import re
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from functions.scheduler.tick import tick
from shared.core.schedule_service import ScheduleService
from shared.core.service import JobService
from shared.registry import ScheduleSpec, load
from tests.conftest import admin_headers
from tests.support.api_checks import error_of, locs
from tests.support.registry_scope import scoped_registrations

BASE = "/api/v1/schedules"


def body(**fields: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"name": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
                         "job": {"job_type": "record", "payload": {"tag": "x"}}}
    b.update(fields)
    return b


async def test_create_then_read_shows_the_next_five_fire_times(api):
    resp = await api.post(BASE, json=body(overlap="skip", misfire="skip"))
    assert resp.status_code == 201, resp.text
    made = resp.json()
    assert resp.headers["Location"] == f"{BASE}/{made['id']}"
    assert made["source"] == "api" and made["overlap"] == "skip" and made["misfire"] == "skip"
    assert made["job"] == {"job_type": "record", "payload": {"tag": "x"}, "priority": 5,
                           "max_retries": 5, "timeout_seconds": 300.0}  # the type's defaults
    times = [datetime.fromisoformat(t) for t in made["next_fire_times"]]
    assert len(times) == 5 and times == sorted(times) and times[0] > datetime.now(UTC)
    berlin = [t.astimezone(ZoneInfo("Europe/Berlin")) for t in times]
    assert all((t.hour, t.minute) in ((2, 30), (3, 0)) for t in berlin)
    got = await api.get(f"{BASE}/{made['id']}")
    assert got.status_code == 200 and got.json()["next_fire_times"] == made["next_fire_times"]
    assert got.json()["last_runs"] == []


async def test_last_runs_show_job_ids_and_states(api, stores, registry):
    made = (await api.post(BASE, json=body(cron="*/5 * * * * *", timezone="UTC"))).json()
    await tick(stores, registry)
    detail = (await api.get(f"{BASE}/{made['id']}")).json()
    runs = detail["last_runs"]
    assert 1 <= len(runs) <= 10
    assert [r["fire_time"] for r in runs] == sorted((r["fire_time"] for r in runs),
                                                    reverse=True)
    for run in runs:
        job = (await api.get(f"/api/v1/jobs/{run['job_id']}")).json()
        assert job["status"] == run["status"] == "QUEUED"
        assert job["scheduled_at"] == run["fire_time"]
    # The next fire times start after the runs already made.
    assert min(detail["next_fire_times"]) > max(r["fire_time"] for r in runs)


async def test_list_pages_by_name(api):
    for name in ("c", "a", "b"):
        assert (await api.post(BASE, json=body(name=name))).status_code == 201
    first = (await api.get(BASE, params={"limit": 2})).json()
    assert [s["name"] for s in first["items"]] == ["a", "b"]
    second = (await api.get(BASE, params={"limit": 2, "cursor": first["next_cursor"]})).json()
    assert [s["name"] for s in second["items"]] == ["c"] and second["next_cursor"] is None
    error_of(await api.get(BASE, params={"cursor": "!!"}), 422)


async def test_pause_stops_fire_times_and_resume_starts_from_now(api, stores, registry, db):
    made = (await api.post(BASE, json=body(cron="* * * * * *", timezone="UTC"))).json()
    paused = await api.patch(f"{BASE}/{made['id']}", json={"paused": True})
    assert paused.status_code == 200 and paused.json()["next_fire_times"] == []
    await tick(stores, registry)
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0
    await db.execute("UPDATE schedules SET next_fire_at = now() - interval '1 hour'")
    resumed = (await api.patch(f"{BASE}/{made['id']}", json={"paused": False})).json()
    first = datetime.fromisoformat(resumed["next_fire_times"][0])
    assert first > datetime.now(UTC) - timedelta(seconds=1)  # no catch-up for the pause
    summary = await tick(stores, registry)
    assert summary["schedule_runs_missed"] == 0


async def test_patch_changes_the_cron_and_template(api):
    made = (await api.post(BASE, json=body())).json()
    resp = await api.patch(f"{BASE}/{made['id']}", json={
        "cron": "@hourly", "timezone": "UTC",
        "job": {"job_type": "noop", "payload": {}, "priority": 2}})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["cron"] == "@hourly" and out["job"]["job_type"] == "noop"
    assert out["job"]["priority"] == 2
    assert all(datetime.fromisoformat(t).minute == 0 for t in out["next_fire_times"])


async def test_delete_then_404(api):
    made = (await api.post(BASE, json=body())).json()
    assert (await api.delete(f"{BASE}/{made['id']}")).status_code == 204
    error_of(await api.get(f"{BASE}/{made['id']}"), 404)
    error_of(await api.delete(f"{BASE}/{made['id']}"), 404)
    error_of(await api.patch(f"{BASE}/{made['id']}", json={"paused": True}), 404)


async def test_duplicate_name_is_409_and_keeps_the_first(api):
    assert (await api.post(BASE, json=body())).status_code == 201
    err = error_of(await api.post(BASE, json=body(cron="@daily")), 409)
    assert locs(err) == [["body", "name"]]
    (only,) = (await api.get(BASE)).json()["items"]
    assert only["cron"] == "30 2 * * *"


@pytest.mark.parametrize("fields,where", [
    ({"cron": "61 * * * *"}, ["body", "cron"]),
    ({"cron": "* * *"}, ["body", "cron"]),
    ({"cron": "0 0 30 2 *"}, ["body", "cron"]),
    ({"cron": "@fortnightly"}, ["body", "cron"]),
    ({"cron": "x" * 500}, ["body", "cron"]),
    ({"timezone": "Mars/Olympus"}, ["body", "timezone"]),
    ({"timezone": "../../etc/passwd"}, ["body", "timezone"]),
    ({"start_at": "2030-01-02T00:00:00Z", "end_at": "2030-01-01T00:00:00Z"},
     ["body", "end_at"]),
    ({"start_at": "2030-01-02T00:00:00"}, ["body", "start_at"]),  # no time zone
    ({"end_at": "9999-12-31T23:59:59+00:00"}, ["body", "end_at"]),
    ({"overlap": "queue"}, ["body", "overlap"]),
    ({"misfire": "run_all"}, ["body", "misfire"]),
    ({"name": ""}, ["body", "name"]),
    ({"name": "a\x00b"}, ["body", "name"]),
    ({"job": {"job_type": "no-such-type"}}, ["body", "job", "job_type"]),
    ({"job": {"job_type": "record", "payload": {"seconds": "long"}}},
     ["body", "job", "payload", "seconds"]),
    ({"job": {"job_type": "record", "priority": 0}}, ["body", "job", "priority"]),
    ({"job": {"job_type": "record", "scheduled_at": "2030-01-01T00:00:00Z"}},
     ["body", "job", "scheduled_at"]),
    ({"colour": "blue"}, ["body", "colour"]),
])
async def test_bad_input_is_a_422_naming_the_field_and_stores_nothing(api, db, fields, where):
    err = error_of(await api.post(BASE, json=body(**fields)), 422)
    assert where in locs(err), err
    assert await db.fetchval("SELECT count(*) FROM schedules") == 0


@pytest.mark.parametrize("patch,where", [
    ({"cron": "nope"}, ["body", "cron"]),
    ({"cron": None}, ["body", "cron"]),
    ({"timezone": "Nowhere/Land"}, ["body", "timezone"]),
    ({"start_at": "2031-01-01T00:00:00Z"}, ["body", "start_at"]),  # after the stored end
    ({"job": {"job_type": "record", "payload": {"seconds": []}}},
     ["body", "job", "payload", "seconds"]),
])
async def test_bad_patch_is_a_422_and_changes_nothing(api, db, patch, where):
    made = (await api.post(BASE, json=body(end_at="2030-06-01T00:00:00Z"))).json()
    before = await db.fetchrow("SELECT * FROM schedules")
    err = error_of(await api.patch(f"{BASE}/{made['id']}", json=patch), 422)
    assert where in locs(err), err
    assert await db.fetchrow("SELECT * FROM schedules") == before


async def test_code_schedules_show_in_the_api_and_cannot_be_redefined_there(api, registry):
    registry.add_schedule(ScheduleSpec("from-code", "@daily", "noop"))
    try:
        items = (await api.get(BASE)).json()["items"]  # synced before the first request
        (sched,) = [s for s in items if s["name"] == "from-code"]
        assert sched["source"] == "code"
        err = error_of(await api.patch(f"{BASE}/{sched['id']}", json={"cron": "@hourly"}), 409)
        assert locs(err) == [["body", "cron"]]
        assert (await api.patch(f"{BASE}/{sched['id']}", json={"paused": True})).json()[
            "paused"] is True
        error_of(await api.delete(f"{BASE}/{sched['id']}"), 409)
        err = error_of(await api.post(BASE, json=body(name="from-code")), 409)
    finally:
        registry.remove_schedule("from-code")


# --- the README's examples ----------------------------------------------------------------------


ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EXAMPLE = (ROOT / "examples" / "nightly_schedule.py").read_text()


async def test_readme_curl_example_creates_its_schedule(api):
    (doc,) = re.findall(r"/api/v1/schedules .*?<<'JSON'\n(.*?)\nJSON", README, re.S)
    resp = await api.post(BASE, json=json.loads(doc))
    assert resp.status_code == 201, resp.text
    assert resp.json()["overlap"] == "skip" and len(resp.json()["next_fire_times"]) == 5


async def test_readme_code_example_is_the_example_module_and_syncs(api, db):
    code = EXAMPLE.split('"""\n\n', 1)[1]
    assert f"```python\n{code}```" in README
    with scoped_registrations() as registry:
        sys.modules.pop("examples.nightly_schedule", None)
        load(["examples.nightly_schedule"])
        try:
            items = (await api.get(BASE)).json()["items"]
            (made,) = [s for s in items if s["name"] == "nightly-word-count"]
            assert made["source"] == "code" and made["timezone"] == "Europe/Berlin"
            assert made["job"]["job_type"] == "text_stats" and made["overlap"] == "skip"
        finally:
            registry.remove_schedule("nightly-word-count")
            sys.modules.pop("examples.nightly_schedule", None)


# --- who may, and whose -----------------------------------------------------------------------


async def test_reading_needs_jobs_read_and_changing_needs_jobs_write(api_as):
    anonymous = await api_as()
    reader = await api_as("jobs:read")
    error_of(await anonymous.get(BASE), 401)
    assert (await reader.get(BASE)).status_code == 200
    error_of(await reader.post(BASE, json=body()), 403)
    writer = await api_as("jobs:write")
    made = await writer.post(BASE, json=body())
    assert made.status_code == 201, made.text
    error_of(await reader.patch(f"{BASE}/{made.json()['id']}", json={"paused": True}), 403)
    error_of(await reader.delete(f"{BASE}/{made.json()['id']}"), 403)


async def test_tenants_see_only_their_own_schedules_and_their_runs_carry_the_namespace(
        api, api_as, stores, registry, db):
    acme = await api_as("jobs:write", namespace="acme")
    globex = await api_as("jobs:write", namespace="globex")
    mine = (await acme.post(BASE, json=body(cron="*/5 * * * * *", timezone="UTC"))).json()
    assert mine["namespace"] == "acme"
    theirs = await globex.post(BASE, json=body())  # the same name: names are per tenant
    assert theirs.status_code == 201, theirs.text
    assert [s["name"] for s in (await globex.get(BASE)).json()["items"]] == ["nightly"]
    assert (await globex.get(BASE)).json()["items"][0]["id"] == theirs.json()["id"]
    error_of(await globex.get(f"{BASE}/{mine['id']}"), 404)
    error_of(await globex.patch(f"{BASE}/{mine['id']}", json={"paused": True}), 404)
    error_of(await globex.delete(f"{BASE}/{mine['id']}"), 404)
    everyone = (await api.get(BASE, params={"limit": 1})).json()  # unbound: both, paged
    rest = (await api.get(BASE, params={"cursor": everyone["next_cursor"]})).json()
    assert {s["namespace"] for s in everyone["items"] + rest["items"]} == {"acme", "globex"}
    await tick(stores, registry)
    namespaces = await db.fetch("SELECT DISTINCT namespace FROM jobs WHERE schedule_id = $1",
                                uuid.UUID(mine["id"]))
    assert [r["namespace"] for r in namespaces] == ["acme"]
    run = (await acme.get(f"{BASE}/{mine['id']}")).json()["last_runs"][0]
    assert (await acme.get(f"/api/v1/jobs/{run['job_id']}")).status_code == 200
    error_of(await globex.get(f"/api/v1/jobs/{run['job_id']}"), 404)


async def test_a_webhook_templates_credentials_are_sealed_and_never_shown(settings, db,
                                                                         registry):
    from cryptography.fernet import Fernet

    from functions.api.app import create_app

    keyed = settings.model_copy(update={"payload_key": Fernet.generate_key().decode()})
    app = create_app(keyed)
    secret = "Bearer tok-7c1e9a3b5d"
    hook = {"job_type": "webhook", "payload": {
        "url": "https://hooks.example.com/nightly", "headers": {"Authorization": secret}}}
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api",
                                     headers=await admin_headers(keyed)) as client:
            made = await client.post(BASE, json=body(name="hook", job=hook))
            assert made.status_code == 201, made.text
            assert "tok-7c1e9a3b5d" not in made.text
            assert made.json()["job"]["payload"]["headers"] == {"Authorization": "***"}
            got = await client.get(f"{BASE}/{made.json()['id']}")
            assert "tok-7c1e9a3b5d" not in got.text
        stored = await db.fetchval("SELECT payload::text FROM schedules WHERE name = 'hook'")
        assert "tok-7c1e9a3b5d" not in stored and "sealed" in stored
        # Declared in code, the same template is stored once: sealing again is no change.
        registry.add_schedule(ScheduleSpec("hook-code", "@daily", "webhook", hook["payload"]))
        try:
            service = ScheduleService(JobService(app.state.stores, registry))
            assert (await service.sync(registry)).created == ["hook-code"]
            assert (await service.sync(registry)).unchanged == ["hook-code"]
        finally:
            registry.remove_schedule("hook-code")
    finally:
        await app.state.stores.close()


async def test_a_list_page_stops_at_its_byte_bound(settings):
    from functions.api.app import create_app

    small = settings.model_copy(update={"api_page_max_bytes": 4096})
    app = create_app(small)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api",
                                     headers=await admin_headers(small)) as client:
            for i in range(6):
                made = await client.post(BASE, json=body(name=f"big-{i}", job={
                    "job_type": "record", "payload": {"tag": "x" * 1500}}))
                assert made.status_code == 201, made.text
            names: list[str] = []
            cursor = None
            while True:
                resp = await client.get(BASE, params={"limit": 200, **(
                    {"cursor": cursor} if cursor else {})})
                assert resp.status_code == 200 and len(resp.content) <= 4096
                page = resp.json()
                assert page["items"]
                names += [s["name"] for s in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert names == [f"big-{i}" for i in range(6)]
    finally:
        await app.state.stores.close()
