"""Fire times of recurring schedules: time zones, DST, aliases, and what one pass plans
(misfires after an outage, the per-pass bound, the end date), all with a controlled clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.core import schedules as cron

BERLIN = "Europe/Berlin"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def daily_runs(expr: str, tz: str, day_before: datetime, days: int) -> list[datetime]:
    first = cron.first_fire(expr, tz, day_before, None, None)
    return cron.upcoming(expr, tz, first, None, days)


def test_daily_0230_in_berlin_runs_once_on_the_spring_forward_day():
    # 2026-03-29: clocks go from 02:00 CET to 03:00 CEST; 02:30 does not exist that day.
    runs = daily_runs("30 2 * * *", BERLIN, utc(2026, 3, 27, 12), 3)
    assert runs == [utc(2026, 3, 28, 1, 30),  # 02:30 CET
                    utc(2026, 3, 29, 1, 0),  # once, at 03:00 CEST: the first instant after
                    utc(2026, 3, 30, 0, 30)]  # 02:30 CEST
    on_the_day = [t for t in runs if t.astimezone(cron.zone(BERLIN)).date().day == 29]
    assert len(on_the_day) == 1


def test_daily_0230_in_berlin_runs_once_on_the_fall_back_day():
    # 2026-10-25: clocks go from 03:00 CEST back to 02:00 CET; 02:30 happens twice.
    runs = daily_runs("30 2 * * *", BERLIN, utc(2026, 10, 23, 12), 3)
    assert runs == [utc(2026, 10, 24, 0, 30),  # 02:30 CEST
                    utc(2026, 10, 25, 0, 30),  # the first 02:30 (CEST) only
                    utc(2026, 10, 26, 1, 30)]  # 02:30 CET


def test_hourly_schedule_over_the_fall_back_hour_fires_every_real_hour():
    # A wildcard hour follows the wall clock through both 02:00s: no hour is lost.
    first = cron.first_fire("0 * * * *", BERLIN, utc(2026, 10, 24, 23, 30), None, None)
    runs = cron.upcoming("0 * * * *", BERLIN, first, None, 4)
    assert runs == [utc(2026, 10, 25, h) for h in range(0, 4)]


def test_same_expression_in_two_zones_fires_at_their_own_local_time():
    ny = daily_runs("0 9 * * 1-5", "America/New_York", utc(2026, 7, 5, 12), 1)  # a Sunday
    tokyo = daily_runs("0 9 * * 1-5", "Asia/Tokyo", utc(2026, 7, 5, 12), 1)
    assert ny == [utc(2026, 7, 6, 13)]  # 09:00 EDT
    assert tokyo == [utc(2026, 7, 6, 0)]  # Monday 09:00 JST: 13 hours before New York's


@pytest.mark.parametrize("alias,expanded", [("@hourly", "0 * * * *"), ("@daily", "0 0 * * *"),
                                            ("@WEEKLY", "0 0 * * 0"),
                                            ("@yearly", "0 0 1 1 *")])
def test_aliases_expand_to_five_fields(alias, expanded):
    assert cron.check_cron(alias) == expanded


def test_a_sixth_leading_field_is_seconds():
    first = cron.first_fire("*/15 * * * * *", "UTC", utc(2026, 1, 1, 0, 0, 1), None, None)
    assert cron.upcoming("*/15 * * * * *", "UTC", first, None, 3) == [
        utc(2026, 1, 1, 0, 0, 15), utc(2026, 1, 1, 0, 0, 30), utc(2026, 1, 1, 0, 0, 45)]


@pytest.mark.parametrize("expr", ["", "* * *", "61 * * * *", "* 24 * * *", "0 0 30 2 *",
                                  "@fortnightly", "* * * * * * *", "a b c d e"])
def test_bad_or_never_firing_expressions_are_refused(expr):
    with pytest.raises(cron.CronError):
        cron.check_cron(expr)


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", "/etc/localtime",
                                  "Europe/Berlin\x00"])
def test_unknown_time_zones_are_refused(name):
    with pytest.raises(ValueError):
        cron.zone(name)


def test_start_and_end_bound_the_fire_times():
    start, end = utc(2026, 5, 1, 10), utc(2026, 5, 1, 12)
    first = cron.first_fire("0 * * * *", "UTC", utc(2026, 1, 1), start, end)
    assert first == start  # a fire time at the start itself counts
    assert cron.upcoming("0 * * * *", "UTC", first, end, 10) == [
        utc(2026, 5, 1, 10), utc(2026, 5, 1, 11), utc(2026, 5, 1, 12)]
    assert cron.first_fire("0 * * * *", "UTC", utc(2026, 6, 1), start, end) is None


# --- one pass's plan ---------------------------------------------------------------------------


def plan(watermark: datetime, now: datetime, **kw: object) -> cron.Plan:
    options: dict[str, object] = {"grace": 60.0, "misfire": "run_once", "end_at": None,
                                  "max_runs": 100, "horizon": now + timedelta(seconds=90)}
    options.update(kw)
    return cron.plan("* * * * *", "UTC", watermark, now=now, **options)  # type: ignore[arg-type]


def test_plan_makes_every_fire_time_within_the_lookahead_and_moves_the_watermark():
    now = utc(2026, 1, 1, 12, 0, 30)
    p = plan(utc(2026, 1, 1, 12, 1), now, horizon=now + timedelta(minutes=3))
    assert p.runs == [utc(2026, 1, 1, 12, m) for m in (1, 2, 3)]
    assert p.next_fire_at == utc(2026, 1, 1, 12, 4) and p.skipped_misfire == 0


def test_plan_after_an_outage_with_run_once_makes_one_run_for_all_missed_times():
    # Down from 12:00 to 13:00: 12:00..12:58 are missed (older than the 60 s grace).
    now = utc(2026, 1, 1, 13, 0, 0)
    p = plan(utc(2026, 1, 1, 12, 0), now)
    assert p.runs[0] == utc(2026, 1, 1, 12, 58)  # the latest missed time, runs at once
    assert p.runs[1:] == [utc(2026, 1, 1, 12, 59), utc(2026, 1, 1, 13, 0),
                          utc(2026, 1, 1, 13, 1)]  # late within the grace, then ahead
    assert p.skipped_misfire == 58


def test_plan_after_an_outage_with_skip_makes_no_run_for_missed_times():
    now = utc(2026, 1, 1, 13, 0, 0)
    p = plan(utc(2026, 1, 1, 12, 0), now, misfire="skip")
    assert p.runs == [utc(2026, 1, 1, 12, 59), utc(2026, 1, 1, 13, 0), utc(2026, 1, 1, 13, 1)]
    assert p.skipped_misfire == 59


def test_plan_is_bounded_per_pass_and_the_next_pass_carries_on():
    now = utc(2026, 1, 1, 12, 0, 0)
    every_second = {"horizon": now + timedelta(seconds=90), "max_runs": 50}
    first = cron.plan("* * * * * *", "UTC", now, now=now, grace=60.0, misfire="skip",
                      end_at=None, **every_second)  # type: ignore[arg-type]
    assert len(first.runs) == 50 and first.next_fire_at == now + timedelta(seconds=50)
    assert first.next_fire_at is not None
    second = cron.plan("* * * * * *", "UTC", first.next_fire_at, now=now, grace=60.0,
                       misfire="skip", end_at=None, **every_second)  # type: ignore[arg-type]
    assert second.runs[0] == now + timedelta(seconds=50)
    assert second.runs[-1] == now + timedelta(seconds=90)  # 41 more: 91 fire times in all
    assert len(first.runs) + len(second.runs) == 91


def test_plan_stops_at_the_end_date():
    now = utc(2026, 1, 1, 12, 0, 30)
    p = plan(utc(2026, 1, 1, 12, 1), now, end_at=utc(2026, 1, 1, 12, 1, 30))
    assert p.runs == [utc(2026, 1, 1, 12, 1)] and p.next_fire_at is None
