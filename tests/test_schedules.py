"""Recurring schedules on the real stores: exactly one job per (schedule, fire time) under
racing ticks and workers, runs on time, the overlap and misfire policies, outages of
PostgreSQL and Redis, and schedules declared in code."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from functions.scheduler.tick import tick
from shared.connections import Stores
from shared.core.lifecycle import Lifecycle
from shared.core.schedule_service import ScheduleService
from shared.core.service import JobService
from shared.errors import Conflict
from shared.maintenance.schedules import fire_schedules
from shared.observability import metrics
from shared.registry import Registry, ScheduleSpec
from shared.schedule_schemas import ScheduleCreate, ScheduleUpdate
from shared.settings import Settings
from shared.store import migrate
from tests.conftest import WorkerHandle, drop_namespace, make_settings
from tests.support.servers import PostgresServer, RedisServer
from tests.support.waits import eventually


def schedules_of(stores: Stores, registry: Registry) -> ScheduleService:
    return ScheduleService(JobService(stores, registry))


async def make(stores: Stores, registry: Registry, *, now: datetime | None = None,
               **fields: Any) -> Any:
    body: dict[str, Any] = {"name": "every-second", "cron": "* * * * * *",
                            "job": {"job_type": "record", "payload": {}}}
    body.update(fields)
    return await schedules_of(stores, registry).create(ScheduleCreate.model_validate(body),
                                                       now=now)


async def runs_of(db: Any, schedule_id: Any) -> list[Any]:
    return list(await db.fetch(
        "SELECT id, fire_time, scheduled_at, status, status_reason, created_at, started_at, "
        "finished_at "
        "FROM jobs WHERE schedule_id = $1 ORDER BY fire_time", schedule_id))


async def pass_at(stores: Stores, now: datetime, **kw: Any) -> Any:
    s = stores.settings
    options: dict[str, Any] = {"lookahead_seconds": s.schedule_lookahead_seconds,
                               "grace_seconds": s.schedule_misfire_grace_seconds,
                               "max_runs": s.schedule_max_runs_per_tick}
    options.update(kw)
    return await fire_schedules(Lifecycle(await stores.store(), stores.queue), now=now,
                                **options)


def whole_second(t: datetime) -> datetime:
    return t.replace(microsecond=0)


def counted(registry: Any, schedule: str, outcome: str) -> float:
    return registry.get_sample_value("schedule_runs_total",
                                     {"schedule": schedule, "outcome": outcome}) or 0.0


# --- making runs ----------------------------------------------------------------------------------


async def test_a_pass_makes_the_runs_within_the_lookahead_in_the_delayed_set(
        stores, registry, db):
    now = whole_second(datetime.now(UTC))
    s = await make(stores, registry, now=now, cron="*/10 * * * * *")
    done = await pass_at(stores, now, lookahead_seconds=60)
    runs = await runs_of(db, s["id"])
    assert done.enqueued == len(runs) == 6
    assert [r["fire_time"] for r in runs] == [r["scheduled_at"] for r in runs]
    assert all(r["status"] == "QUEUED" for r in runs)
    delayed = stores.queue().k_delayed
    for r in runs:  # each one waits in Redis for its own millisecond
        score = await stores.redis.zscore(delayed, str(r["id"]))
        assert score is not None and int(score) == int(r["fire_time"].timestamp() * 1000)
    watermark = await db.fetchval("SELECT next_fire_at FROM schedules WHERE id = $1", s["id"])
    assert watermark == runs[-1]["fire_time"] + timedelta(seconds=10)
    again = await pass_at(stores, now, lookahead_seconds=60)  # nothing new is due
    assert again.enqueued == 0 and len(await runs_of(db, s["id"])) == 6


async def test_one_schedule_makes_at_most_the_bound_per_pass(stores, registry, db):
    now = whole_second(datetime.now(UTC))
    s = await make(stores, registry, now=now)
    done = await pass_at(stores, now, lookahead_seconds=90, max_runs=40)
    assert done.enqueued == 40
    done = await pass_at(stores, now, lookahead_seconds=90, max_runs=40)
    assert done.enqueued == 40
    done = await pass_at(stores, now, lookahead_seconds=90, max_runs=40)
    assert done.enqueued == 10  # fire times now+1 .. now+90
    times = [r["fire_time"] for r in await runs_of(db, s["id"])]
    assert times == [now + timedelta(seconds=i) for i in range(1, 91)]


async def test_the_tick_counts_runs_and_publishes_each_schedules_next_fire_time(
        stores, registry, db):
    s = await make(stores, registry, name="gauged", cron="*/5 * * * * *")
    await make(stores, registry, name="resting", paused=True)
    before = counted(metrics.SHARED, "gauged", "enqueued")
    summary = await tick(stores, registry)
    assert counted(metrics.SHARED, "gauged", "enqueued") - before == summary["schedule_runs"]
    watermark = await db.fetchval("SELECT next_fire_at FROM schedules WHERE id = $1", s["id"])
    gauge = metrics.CLUSTER.get_sample_value("schedule_next_fire_timestamp_seconds",
                                             {"schedule": "gauged"})
    assert gauge == watermark.timestamp() and gauge > datetime.now(UTC).timestamp()
    assert metrics.CLUSTER.get_sample_value("schedule_next_fire_timestamp_seconds",
                                            {"schedule": "resting"}) is None


async def test_a_broken_schedule_row_does_not_hold_the_others_back(stores, registry, db):
    now = whole_second(datetime.now(UTC))
    broken = await make(stores, registry, now=now, name="broken")
    fine = await make(stores, registry, now=now, name="fine")
    await db.execute("UPDATE schedules SET cron = '99 * * * *' WHERE id = $1", broken["id"])
    done = await pass_at(stores, now, lookahead_seconds=3)
    assert done.enqueued == 3
    assert len(await runs_of(db, fine["id"])) == 3 and await runs_of(db, broken["id"]) == []


async def test_paused_and_ended_schedules_make_nothing(stores, registry, db):
    now = whole_second(datetime.now(UTC))
    paused = await make(stores, registry, now=now, name="paused", paused=True)
    ended = await make(stores, registry, now=now, name="ended",
                       end_at=(now + timedelta(seconds=3)).isoformat())
    await pass_at(stores, now, lookahead_seconds=30)
    assert await runs_of(db, paused["id"]) == []
    assert [r["fire_time"] for r in await runs_of(db, ended["id"])] == [
        now + timedelta(seconds=i) for i in (1, 2, 3)]
    assert await db.fetchval("SELECT next_fire_at FROM schedules WHERE id = $1",
                             ended["id"]) is None


# --- exactly once, on time ------------------------------------------------------------------------


async def test_every_fire_time_has_exactly_one_job_under_racing_ticks_and_two_workers(
        settings, registry, db, start_worker):
    # A short look-ahead keeps every pass making a few runs, so the passes really race.
    fast = settings.model_copy(update={"schedule_lookahead_seconds": 1.5,
                                       "scheduler_tick_seconds": 5.0})
    stores = Stores(fast)
    try:
        s = await make(stores, registry)
        await start_worker(concurrency=4)
        await start_worker(concurrency=4)
        stop = asyncio.Event()
        errors: list[BaseException] = []

        async def ticking() -> None:  # the real tick (its lock makes most of them skip)
            while not stop.is_set():
                try:
                    await tick(stores, registry)
                except Exception as exc:
                    errors.append(exc)
                await asyncio.sleep(0.05)

        async def passing() -> None:  # the pass itself, without the tick's lock
            while not stop.is_set():
                try:
                    await pass_at(stores, datetime.now(UTC))
                except Exception as exc:
                    errors.append(exc)
                await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(f()) for f in (ticking, ticking, passing, passing,
                                                     passing)]
        async def twelve_ran() -> bool:  # the schedule fires every second meanwhile
            return bool(await db.fetchval(
                "SELECT count(*) FROM jobs WHERE schedule_id = $1 AND status = 'COMPLETED'",
                s["id"]) >= 12)

        try:
            await eventually(twelve_ran, timeout=40, interval=0.2, what="twelve runs")
        finally:
            stop.set()
        await asyncio.gather(*tasks)
        assert errors == []
        runs = await runs_of(db, s["id"])
        times = [r["fire_time"] for r in runs]
        assert len(times) >= 12
        assert len(set(times)) == len(times)  # (the unique key would refuse otherwise)
        assert times == [times[0] + timedelta(seconds=i) for i in range(len(times))]  # no gap

        async def all_ran() -> bool:
            due = [r["id"] for r in runs if r["fire_time"] <= datetime.now(UTC)
                   - timedelta(seconds=1)]
            done = await db.fetchval(
                "SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) AND status = "
                "'COMPLETED'", due)
            return bool(done == len(due))

        await eventually(all_ran, timeout=15, what="every due run completed")
        per_job = await db.fetch("SELECT job_id, count(*) AS n FROM runs GROUP BY job_id")
        assert all(r["n"] == 1 for r in per_job)  # each run's handler ran once
        late = await db.fetchval(
            """SELECT max(extract(epoch FROM r.started_at - j.fire_time))
               FROM runs r JOIN jobs j ON j.id = r.job_id WHERE j.schedule_id = $1""",
            s["id"])
        early = await db.fetchval(
            """SELECT min(extract(epoch FROM r.started_at - j.fire_time))
               FROM runs r JOIN jobs j ON j.id = r.job_id WHERE j.schedule_id = $1""",
            s["id"])
        assert early >= 0, f"a run started {early:.3f} s before its fire time"
        assert late < 1.0, f"a run started {late:.3f} s after its fire time"
    finally:
        await stores.close()


async def test_a_run_starts_within_a_second_of_its_fire_time(stores, registry, db,
                                                             start_worker):
    s = await make(stores, registry, cron="*/2 * * * * *")
    await start_worker()
    summary = await tick(stores, registry)
    assert summary["schedule_runs"] >= 3

    async def three_started() -> list[Any]:
        rows = await db.fetch(
            """SELECT extract(epoch FROM r.started_at - j.fire_time) AS lateness
               FROM runs r JOIN jobs j ON j.id = r.job_id WHERE j.schedule_id = $1""",
            s["id"])
        return rows if len(rows) >= 3 else []

    rows = await eventually(three_started, timeout=15, what="three runs started")
    for r in rows:
        assert 0 <= r["lateness"] < 1.0, f"started {r['lateness']:+.3f} s from its time"


# --- overlap --------------------------------------------------------------------------------------


async def test_overlap_skip_skips_a_run_while_the_previous_one_still_runs(
        stores, registry, db, start_worker):
    s = await make(stores, registry, overlap="skip",
                   job={"job_type": "record", "payload": {"seconds": 2.5}})
    before = counted(metrics.REGISTRY, "every-second", "skipped_overlap")
    await start_worker(concurrency=4)
    await start_worker(concurrency=4)
    await tick(stores, registry)

    async def settled_runs() -> list[Any]:
        rows = [r for r in await runs_of(db, s["id"])
                if r["status"] in ("COMPLETED", "CANCELLED")]
        return rows if len(rows) >= 7 else []

    rows = await eventually(settled_runs, timeout=30, what="seven runs settled")
    skipped = [r for r in rows if r["status"] == "CANCELLED"]
    ran = [r for r in rows if r["status"] == "COMPLETED"]
    assert skipped and ran
    assert all("skipped" in r["status_reason"] and "every-second" in r["status_reason"]
               for r in skipped)
    handled = {r["job_id"] for r in await db.fetch("SELECT job_id FROM runs")}
    assert not handled & {r["id"] for r in skipped}  # a skipped run's handler never ran
    spans = sorted((r["started_at"], r["finished_at"]) for r in ran)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, "two runs of an overlap: skip schedule ran at once"
    events = await db.fetch(
        "SELECT count(*) AS n FROM jobs WHERE schedule_id = $1 AND status = 'CANCELLED' "
        "AND started_at IS NOT NULL", s["id"])
    assert events[0]["n"] == len(skipped)  # decided when they would start
    assert counted(metrics.REGISTRY, "every-second", "skipped_overlap") - before >= len(skipped)


async def test_overlap_allow_lets_runs_overlap(stores, registry, db, start_worker):
    s = await make(stores, registry, overlap="allow",
                   job={"job_type": "record", "payload": {"seconds": 2.5}})
    await start_worker(concurrency=8)
    await tick(stores, registry)

    async def overlapping() -> bool:
        return bool(await db.fetchval(
            """SELECT count(*) FROM runs a JOIN runs b ON a.job_id < b.job_id
               JOIN jobs ja ON ja.id = a.job_id JOIN jobs jb ON jb.id = b.job_id
               WHERE ja.schedule_id = $1 AND jb.schedule_id = $1
                 AND a.started_at < coalesce(b.ended_at, 'infinity')
                 AND b.started_at < coalesce(a.ended_at, 'infinity')""", s["id"]))

    await eventually(overlapping, timeout=15, what="two runs running at once")
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE schedule_id = $1 AND status = "
                             "'CANCELLED'", s["id"]) == 0


# --- time zones (controlled clock) -----------------------------------------------------------


@pytest.mark.parametrize("start,expected", [
    # spring forward (29 March): 02:30 does not exist; it runs once, at 03:00 CEST
    (datetime(2026, 3, 27, 12, tzinfo=UTC),
     [datetime(2026, 3, 28, 1, 30, tzinfo=UTC), datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
      datetime(2026, 3, 30, 0, 30, tzinfo=UTC)]),
    # fall back (25 October): 02:30 happens twice; it runs once, at the first (CEST)
    (datetime(2026, 10, 23, 12, tzinfo=UTC),
     [datetime(2026, 10, 24, 0, 30, tzinfo=UTC), datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
      datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]),
])
async def test_daily_berlin_schedule_makes_one_job_per_day_across_dst(stores, registry, db,
                                                                      start, expected):
    s = await make(stores, registry, name="berlin", cron="30 2 * * *",
                   timezone="Europe/Berlin", now=start)
    now = start
    for _ in range(3 * 24 * 4):  # a pass every 15 minutes for three days
        now += timedelta(minutes=15)
        await pass_at(stores, now, lookahead_seconds=90)
    times = [r["fire_time"] for r in await runs_of(db, s["id"])]
    assert times == expected


# --- misfires (controlled clock) ------------------------------------------------------------------


@pytest.mark.parametrize("misfire,runs_in_gap,skipped", [("run_once", 1, 57),
                                                         ("skip", 0, 58)])
async def test_missed_fire_times_follow_the_misfire_policy(stores, registry, db, misfire,
                                                           runs_in_gap, skipped):
    t0 = datetime(2031, 1, 1, 12, 0, 30, tzinfo=UTC)  # a clock of our own
    s = await make(stores, registry, cron="* * * * *", misfire=misfire, now=t0)
    missed_before = counted(metrics.SHARED, "every-second", "skipped_misfire")
    first = await pass_at(stores, t0, lookahead_seconds=60, grace_seconds=60)
    assert first.enqueued == 1  # 12:01
    # Nothing ran the pass for an hour (PostgreSQL, Redis or the scheduler down).
    later = t0 + timedelta(hours=1)  # 13:00:30: 12:02 .. 12:59 (58) were missed
    done = await pass_at(stores, later, lookahead_seconds=60, grace_seconds=60)
    assert done.skipped_misfire == skipped
    assert counted(metrics.SHARED, "every-second", "skipped_misfire") - missed_before == skipped
    times = [r["fire_time"] for r in await runs_of(db, s["id"])]
    gap = [t for t in times if t0 + timedelta(seconds=90) < t < later - timedelta(seconds=60)]
    assert len(gap) == runs_in_gap
    if runs_in_gap:
        assert gap == [datetime(2031, 1, 1, 12, 59, tzinfo=UTC)]  # the latest missed time
    assert [t for t in times if t >= later - timedelta(seconds=60)] == [
        datetime(2031, 1, 1, 13, 0, tzinfo=UTC), datetime(2031, 1, 1, 13, 1, tzinfo=UTC)]
    assert len(set(times)) == len(times)


async def test_a_late_pass_reading_an_old_watermark_makes_no_duplicate(stores, registry, db):
    now = whole_second(datetime.now(UTC))
    s = await make(stores, registry, now=now)
    await pass_at(stores, now, lookahead_seconds=10)
    # Put the watermark back, as a pass that committed nothing yet would see it.
    await db.execute("UPDATE schedules SET next_fire_at = $2 WHERE id = $1", s["id"],
                     now + timedelta(seconds=1))
    again = await pass_at(stores, now, lookahead_seconds=10)
    assert again.enqueued == 0  # the unique key refused all ten
    assert len(await runs_of(db, s["id"])) == 10


# --- outages --------------------------------------------------------------------------------------


async def test_postgres_outage_is_caught_up_by_each_schedules_misfire_policy(namespace,
                                                                            registry):
    pg = PostgresServer()
    settings = make_settings(namespace, namespace, database_url=pg.url,
                             schedule_lookahead_seconds=1.0,
                             schedule_misfire_grace_seconds=1.0, scheduler_tick_seconds=5.0)
    stores = Stores(settings)
    try:
        await asyncio.to_thread(migrate.upgrade, pg.url, namespace)
        once = await make(stores, registry, name="once", misfire="run_once")
        skip = await make(stores, registry, name="skip", misfire="skip")
        assert (await tick(stores, registry))["schedule_runs"] >= 2
        pg.stop("immediate")
        down_at = datetime.now(UTC)
        with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            await tick(stores, registry)
        await asyncio.sleep(6)  # six fire times pass while PostgreSQL is down
        pg.start()

        async def ticked() -> dict[str, Any] | None:
            try:
                return await tick(stores, registry)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return None

        summary = await eventually(ticked, timeout=15, what="a tick after the restart")
        assert summary["schedule_runs_missed"] >= 2 * 2
        db = await stores.pool()
        for s, catch_up_runs in ((once, 1), (skip, 0)):
            rows = await runs_of(db, s["id"])
            times = [r["fire_time"] for r in rows]
            assert len(set(times)) == len(times)
            holes = [(a, b) for a, b in itertools.pairwise(times)
                     if b - a > timedelta(seconds=1)]
            assert len(holes) == 1, (s["name"], times)  # the outage, and nothing else
            (before, after), = holes
            assert before < down_at + timedelta(seconds=2)
            assert after - before >= timedelta(seconds=4)  # >= 3 fire times without a job
            # A catch-up run is made after its fire time's grace had passed: run_once makes
            # one for the whole missed block (its latest time, run at once), skip none.
            late = [r for r in rows if r["created_at"] - r["fire_time"]
                    > timedelta(seconds=settings.schedule_misfire_grace_seconds)]
            assert len(late) == catch_up_runs, (s["name"], late)
            if late:
                assert late[0]["fire_time"] == after
    finally:
        await stores.close()
        pg.remove()
        await drop_namespace(namespace)


async def test_redis_lost_and_replaced_runs_every_fire_time_once(settings, registry, db):
    node = RedisServer()
    replacement: RedisServer | None = None
    first = Stores(settings.model_copy(update={"redis_url": node.url,
                                               "schedule_lookahead_seconds": 4.0}))
    handle = None
    try:
        s = await make(first, registry, misfire="run_once")
        assert (await tick(first, registry))["schedule_runs"] >= 4  # made ahead, in Redis
        node.stop()  # Redis is gone with every run it held
        with pytest.raises(Exception):  # noqa: B017 - any Redis error: the tick cannot lock
            await tick(first, registry)
        await first.close()
        replacement = RedisServer()
        fresh: Settings = settings.model_copy(update={"redis_url": replacement.url,
                                                      "schedule_lookahead_seconds": 4.0})
        second = Stores(fresh)
        try:
            summary = await tick(second, registry)  # reconcile puts the made runs back
            assert summary["reconciled_ready"] + summary["reconciled_delayed"] >= 1
            handle = WorkerHandle(fresh.model_copy(update={"worker_id": "w-replaced"}),
                                  registry)
            until = datetime.now(UTC) + timedelta(seconds=3)

            async def all_done() -> bool:
                rows = [r for r in await runs_of(db, s["id"]) if r["fire_time"] <= until]
                return bool(rows) and all(r["status"] == "COMPLETED" for r in rows)

            await eventually(all_done, timeout=20, what="every run up to now completed")
            per_job = await db.fetch("SELECT job_id, count(*) AS n FROM runs GROUP BY job_id")
            assert per_job and all(r["n"] == 1 for r in per_job)
        finally:
            if handle is not None:
                await handle.stop()
            await second.close()
    finally:
        node.stop()
        if replacement is not None:
            replacement.stop()


# --- declared in code -----------------------------------------------------------------------------


async def test_code_schedules_sync_idempotently_and_never_take_an_api_name(
        stores, registry, db):
    service = schedules_of(stores, registry)
    await make(stores, registry, name="taken")
    declared = [ScheduleSpec("nightly", "30 2 * * *", "record", {"tag": "n"},
                             timezone="Europe/Berlin", overlap="skip"),
                ScheduleSpec("taken", "@hourly", "noop"),
                ScheduleSpec("broken", "not a cron", "noop")]
    for spec in declared:
        registry.add_schedule(spec)
    try:
        first = await service.sync(registry)
        assert (first.created, first.taken_by_api, first.invalid) == (
            ["nightly"], ["taken"], ["broken"])
        second = await service.sync(registry)
        assert second.created == [] and second.unchanged == ["nightly"]
        summary = await tick(stores, registry)  # the tick syncs too: still nothing new
        assert summary["schedules_synced"] == 0
        rows = {r["name"]: r for r in await db.fetch("SELECT * FROM schedules")}
        assert set(rows) == {"nightly", "taken"}
        assert rows["nightly"]["source"] == "code" and rows["taken"]["source"] == "api"
        assert rows["taken"]["cron"] == "* * * * * *"  # the API's definition stands
        nightly = rows["nightly"]
        local = nightly["next_fire_at"].astimezone(ZoneInfo("Europe/Berlin"))
        assert (local.hour, local.minute) in ((2, 30), (3, 0))
        # Operators may pause it, not redefine it; the code may redefine it.
        await service.update(nightly["id"], ScheduleUpdate(paused=True))
        with pytest.raises(Conflict):
            await service.update(nightly["id"], ScheduleUpdate(cron="0 3 * * *"))
        with pytest.raises(Conflict):
            await service.delete(nightly["id"], registry)
        registry.add_schedule(ScheduleSpec("nightly", "0 3 * * *", "record", {"tag": "n"},
                                           timezone="Europe/Berlin", overlap="skip"))
        third = await service.sync(registry)
        assert third.updated == ["nightly"]
        row = await db.fetchrow("SELECT cron, paused FROM schedules WHERE name = 'nightly'")
        assert (row["cron"], row["paused"]) == ("0 3 * * *", True)  # pause kept
        registry.remove_schedule("nightly")  # no longer declared: now it can be deleted
        await service.delete(nightly["id"], registry)
        assert await db.fetchval("SELECT count(*) FROM schedules WHERE name = 'nightly'") == 0
    finally:
        for spec in declared:
            registry.remove_schedule(spec.name)


async def test_concurrent_syncs_make_one_schedule(stores, registry, db):
    registry.add_schedule(ScheduleSpec("racy", "@daily", "noop"))
    try:
        services = [schedules_of(stores, registry) for _ in range(6)]
        await asyncio.gather(*(s.sync(registry) for s in services))
        assert await db.fetchval("SELECT count(*) FROM schedules WHERE name = 'racy'") == 1
    finally:
        registry.remove_schedule("racy")

