"""When a recurring schedule fires: cron expressions in a time zone, and what one pass makes.

Everything here is a pure function of its arguments, ``now`` included, so time zones, DST
and outages are tested with a controlled clock instead of by waiting.

Cron evaluation is cronsim's (the library healthchecks.io runs its cron checks on): it
works on the wall clock of an aware datetime and follows Debian cron across DST:

- **spring forward** (Europe/Berlin, last Sunday of March, 02:00 -> 03:00): a daily 02:30
  does not exist that day; it fires once, at 03:00 (the first instant after the gap);
- **fall back** (last Sunday of October, 03:00 -> 02:00): 02:30 happens twice; it fires
  once, at the first 02:30 (CEST, 00:30 UTC).

Expressions: five fields (minute hour day month weekday), or six with a leading seconds
field (``*/10 * * * * *``: every ten seconds), or one of the aliases below.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MAX_CRON_LENGTH = 200
# How many missed fire times an outage's catch-up counts one by one (for the metrics);
# beyond it the count stops there, the decision does not change.
MISSED_COUNTED = 10_000
# A cron that matches nothing for years (``0 0 30 2 *``: 30 February) is refused at once.
_NEVER = timedelta(days=366 * 5)

Overlap = str  # "allow" | "skip"
Misfire = str  # "run_once" | "skip"


class CronError(ValueError):
    """A cron expression cronsim refuses, or one that never fires."""


# What evaluating a stored schedule can raise if its row was written around the checks.
EVALUATION_ERRORS = (ValueError, CronSimError)


def expand(expr: str) -> str:
    """The expression cronsim evaluates: aliases spelled out, whitespace normalised."""
    text = " ".join(expr.split())
    return ALIASES.get(text.lower(), text)


def zone(name: str) -> ZoneInfo:
    """An IANA time zone; ValueError (naming it) when unknown."""
    if not name or len(name) > 64 or name.startswith("/") or ".." in name:
        raise ValueError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}; use an IANA name like "
                         "'Europe/Berlin' or 'UTC'") from None


def check_cron(expr: str) -> str:
    """The expression, expanded, if it parses and fires at least once in five years."""
    if len(expr) > MAX_CRON_LENGTH:
        raise CronError(f"at most {MAX_CRON_LENGTH} characters")
    text = expand(expr)
    fields = len(text.split())
    if fields not in (5, 6):
        raise CronError(f"expected 5 fields (minute hour day month weekday), 6 with a "
                        f"leading seconds field, or an alias ({', '.join(ALIASES)}); "
                        f"got {fields}")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        first = next(CronSim(text, start), None)
    except (CronSimError, ValueError, StopIteration) as exc:
        raise CronError(str(exc) or "invalid cron expression") from None
    if first is None or first - start > _NEVER:
        raise CronError("never fires")
    return text


def fire_times(expr: str, tz: str, after: datetime) -> Iterator[datetime]:
    """Fire times strictly after ``after``, in UTC, forever (take what you need)."""
    local = after.astimezone(zone(tz))
    for t in CronSim(expand(expr), local):
        yield t.astimezone(UTC)


def latest_before(expr: str, tz: str, before: datetime) -> datetime | None:
    """The last fire time strictly before ``before`` (reverse iteration), or None."""
    local = before.astimezone(zone(tz))
    if local.microsecond == 0:  # cronsim's reverse includes a whole-second start
        local -= timedelta(microseconds=1)
    t = next(CronSim(expand(expr), local, reverse=True), None)
    return None if t is None else t.astimezone(UTC)


def first_fire(expr: str, tz: str, now: datetime, start_at: datetime | None,
               end_at: datetime | None) -> datetime | None:
    """The first fire time of a new (or resumed, or re-timed) schedule: after ``now`` and
    at or after ``start_at``; None if that is past ``end_at``."""
    begin = now if start_at is None else max(now, start_at - timedelta(microseconds=1))
    t = next(fire_times(expr, tz, begin), None)
    return None if t is None or (end_at is not None and t > end_at) else t


def upcoming(expr: str, tz: str, watermark: datetime | None, end_at: datetime | None,
             n: int) -> list[datetime]:
    """The next ``n`` fire times not yet made into jobs, from the watermark on."""
    if watermark is None:
        return []
    times = itertools.chain([watermark], fire_times(expr, tz, watermark))
    out = []
    for t in itertools.islice(times, n):
        if end_at is not None and t > end_at:
            break
        out.append(t)
    return out


@dataclass
class Plan:
    """What one pass makes for one schedule, and where its watermark goes."""

    runs: list[datetime] = field(default_factory=list)  # fire times, each one job
    skipped_misfire: int = 0  # missed fire times that get no job of their own
    next_fire_at: datetime | None = None  # the new watermark (None: no fire time left)


def plan(expr: str, tz: str, watermark: datetime, *, now: datetime, horizon: datetime,
         grace: float, misfire: Misfire, end_at: datetime | None, max_runs: int) -> Plan:
    """The fire times from ``watermark`` up to ``horizon`` (``now`` + the lookahead).

    A fire time older than ``now - grace`` was missed (the scheduler, PostgreSQL or Redis
    was down when it should have been made). ``misfire="run_once"`` makes one job for all
    of them, at the latest missed time (it runs at once); ``"skip"`` makes none. Fire times
    within the grace are late, not missed: each still gets its job, which runs at once.
    At most ``max_runs`` jobs per pass: the watermark stops after the last one made, and
    the next pass carries on from there.
    """
    out = Plan()
    cutoff = now - timedelta(seconds=grace)
    t: datetime | None = watermark
    if t is not None and t < cutoff:
        latest = latest_before(expr, tz, cutoff)
        missed = 0
        for m in itertools.chain([t], fire_times(expr, tz, t)):
            if m >= cutoff or missed >= MISSED_COUNTED or (end_at is not None and m > end_at):
                break
            missed += 1
        if latest is not None and latest >= t and (end_at is None or latest <= end_at):
            if misfire == "run_once":
                out.runs.append(latest)
                missed -= 1
            t = next(fire_times(expr, tz, latest), None)
        out.skipped_misfire = max(missed, 0)
        while t is not None and t < cutoff:  # only if latest_before disagreed: be safe
            t = next(fire_times(expr, tz, t), None)
    while t is not None and t <= horizon and len(out.runs) < max_runs:
        if end_at is not None and t > end_at:
            t = None
            break
        out.runs.append(t)
        t = next(fire_times(expr, tz, t), None)
    if t is not None and end_at is not None and t > end_at:
        t = None
    out.next_fire_at = t
    return out
