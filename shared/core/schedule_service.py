"""Creating, reading and steering recurring schedules, and syncing those declared in code.

Input is checked by the same rules whether it comes from ``POST /schedules`` or from a
``schedule(...)`` declaration: the cron and zone by the body's model, the job template by
``JobService`` exactly as ``POST /jobs`` checks a job. The watermark (``next_fire_at``) is
set here only when a schedule starts afresh (created, resumed, re-timed): from ``now`` on,
so a pause or a change never makes a burst of catch-up runs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from pydantic import ValidationError

from shared.api_schemas import JobCreate
from shared.core import schedules as cron
from shared.core.service import JobService
from shared.errors import Conflict, NotFound, ValidationFailed
from shared.observability.logs import get_logger
from shared.registry import Registry, ScheduleSpec
from shared.schedule_schemas import JobTemplate, ScheduleCreate, ScheduleUpdate
from shared.store.jobs import NewJob
from shared.store.schedules import NewSchedule, ScheduleStore

log = get_logger("schedules")

NEXT_SHOWN = 5
RUNS_SHOWN = 10
# Changing one of these starts the schedule afresh from now (a new watermark).
RETIMING = ("cron", "timezone", "start_at", "end_at")
DEFINITION = ("cron", "timezone", "job_type", "payload", "priority", "max_retries",
              "timeout_seconds", "queue", "overlap", "misfire", "start_at", "end_at")


@dataclass
class Synced:
    """What one sync of the code-declared schedules did, by name."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    taken_by_api: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)


class ScheduleService:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.stores = jobs.stores
        self.settings = jobs.settings

    async def _store(self) -> ScheduleStore:
        return ScheduleStore(await self.stores.pool())

    def _template(self, job: JobTemplate, now: datetime) -> NewJob:
        """The job a fire time makes, resolved and checked as ``POST /jobs`` would."""
        spec = JobCreate(**job.model_dump(exclude_unset=True))
        return self.jobs._prepare(spec, ["body", "job"], now)

    # --- create and read -----------------------------------------------------------------

    def _new(self, spec: ScheduleCreate, source: str, now: datetime,
             namespace: str | None = None) -> NewSchedule:
        job = self._template(spec.job, now)
        return NewSchedule(
            name=spec.name, cron=spec.cron, timezone=spec.timezone, job_type=job.job_type,
            payload=job.payload, priority=job.priority, max_retries=job.max_retries,
            timeout_seconds=job.timeout_seconds, queue=job.queue, overlap=spec.overlap,
            misfire=spec.misfire, source=source, paused=spec.paused, start_at=spec.start_at,
            end_at=spec.end_at, namespace=namespace,
            next_fire_at=cron.first_fire(spec.cron, spec.timezone, now, spec.start_at,
                                         spec.end_at))

    async def create(self, spec: ScheduleCreate, *, now: datetime | None = None,
                     namespace: str | None = None) -> asyncpg.Record:
        """``namespace``: the caller's tenant, stored on the schedule and on every job it
        makes; names are unique per tenant."""
        row = await (await self._store()).create(self._new(spec, "api", now or _now(),
                                                           namespace))
        if row is None:
            raise Conflict(f"a schedule named {spec.name!r} exists",
                           [{"loc": ["body", "name"], "msg": "name taken",
                             "type": "conflict"}])
        return row

    async def get(self, schedule_id: uuid.UUID, namespace: str | None = None
                  ) -> asyncpg.Record:
        """Another tenant's schedule is not found (404), like another tenant's job."""
        row = await (await self._store()).get(schedule_id, namespace)
        if row is None:
            raise NotFound(f"schedule {schedule_id} not found")
        return row

    def _same_payload(self, job_type: str, new: Any, stored: Any) -> bool:
        """Whether two stored payloads say the same (sealing encrypts with a fresh nonce
        each time, so a type with credentials never stores the same bytes twice)."""
        jt = self.jobs.registry.get(job_type)
        if jt is None:
            return False
        try:
            return bool(jt.parse(new, self.settings).model_dump(mode="json")
                        == jt.parse(stored, self.settings).model_dump(mode="json"))
        except ValidationError:
            return False

    async def runs(self, schedule_id: uuid.UUID) -> list[asyncpg.Record]:
        return await (await self._store()).recent_runs(schedule_id, RUNS_SHOWN)

    async def page(self, *, after: tuple[str, uuid.UUID] | None, limit: int,
                   namespace: str | None = None) -> list[asyncpg.Record]:
        return await (await self._store()).page(after=after, limit=limit,
                                                namespace=namespace)

    @staticmethod
    def next_times(row: Any) -> list[datetime]:
        if row["paused"]:
            return []
        return cron.upcoming(row["cron"], row["timezone"], row["next_fire_at"], row["end_at"],
                             NEXT_SHOWN)

    # --- change ----------------------------------------------------------------------------

    async def update(self, schedule_id: uuid.UUID, patch: ScheduleUpdate, *,
                     now: datetime | None = None, namespace: str | None = None
                     ) -> asyncpg.Record:
        now = now or _now()
        row = await self.get(schedule_id, namespace)
        given = patch.model_dump(exclude_unset=True)
        nulls = sorted(k for k, v in given.items() if v is None and k not in
                       ("start_at", "end_at"))
        if nulls:
            raise ValidationFailed(f"{', '.join(nulls)} cannot be null", [
                {"loc": ["body", k], "msg": "cannot be null", "type": "value_error"}
                for k in nulls])
        if row["source"] == "code" and set(given) - {"paused"}:
            raise Conflict(
                f"schedule {row['name']!r} is declared in code: change it there (only "
                "'paused' can be set here)",
                [{"loc": ["body", k], "msg": "declared in code", "type": "conflict"}
                 for k in sorted(set(given) - {"paused"})])
        changes: dict[str, Any] = {k: v for k, v in given.items() if k != "job"}
        if patch.job is not None:
            job = self._template(patch.job, now)
            changes.update(job_type=job.job_type, payload=job.payload, priority=job.priority,
                           max_retries=job.max_retries, timeout_seconds=job.timeout_seconds,
                           queue=job.queue)
        merged = {**dict(row), **changes}
        if (merged["start_at"] is not None and merged["end_at"] is not None
                and merged["end_at"] <= merged["start_at"]):
            raise ValidationFailed("end_at must be after start_at", [
                {"loc": ["body", "end_at" if "end_at" in given else "start_at"],
                 "msg": "end_at must be after start_at", "type": "value_error"}])
        resumed = row["paused"] and changes.get("paused") is False
        if resumed or any(k in changes for k in RETIMING):
            changes["next_fire_at"] = cron.first_fire(
                merged["cron"], merged["timezone"], now, merged["start_at"], merged["end_at"])
        updated = await (await self._store()).update(schedule_id, changes, namespace)
        if updated is None:
            raise NotFound(f"schedule {schedule_id} not found")
        return updated

    async def delete(self, schedule_id: uuid.UUID, registry: Registry,
                     namespace: str | None = None) -> None:
        row = await self.get(schedule_id, namespace)
        if row["source"] == "code" and any(s.name == row["name"]
                                           for s in registry.schedules()):
            raise Conflict(f"schedule {row['name']!r} is declared in code: remove it there "
                           "(or pause it here)")
        await (await self._store()).delete(schedule_id, namespace)

    # --- schedules declared in code ----------------------------------------------------------

    async def sync(self, registry: Registry, *, now: datetime | None = None) -> Synced:
        """Make the schedules table hold every schedule declared in code, by name.

        Idempotent: a declaration already stored unchanged costs one read. A changed one is
        updated (and started afresh if re-timed); ``paused`` is left as operators set it.
        Code schedules have no tenant. A name taken by a schedule an unbound caller made
        through the API stays the API's: the declaration is ignored (and logged) until one
        of them is renamed or the API one is deleted. (A tenant's schedules have names of
        their own, so no tenant can take a code schedule's name.)
        An invalid declaration is logged and skipped, never blocking the others.
        """
        now = now or _now()
        done = Synced()
        specs = registry.schedules()
        if not specs:
            return done
        store = await self._store()
        existing = {r["name"]: r for r in await store.unbound_by_name(
            [s.name for s in specs])}
        for spec in specs:
            try:
                new = self._new(_declared(spec), "code", now)
            except (ValidationError, ValidationFailed, ValueError) as exc:
                log.error("schedule declared in code is invalid", extra={
                    "schedule": spec.name, "error": str(exc)[:2000]})
                done.invalid.append(spec.name)
                continue
            row = existing.get(spec.name)
            if row is None:
                if await store.create(new) is not None:
                    done.created.append(spec.name)
                    continue
                row = (await store.unbound_by_name([spec.name]))[0]  # another process won
            if row["source"] != "code":
                log.warning("schedule declared in code ignored: an API-made schedule has "
                            "its name", extra={"schedule": spec.name})
                done.taken_by_api.append(spec.name)
                continue
            changes = {k: getattr(new, k) for k in DEFINITION if getattr(new, k) != row[k]}
            if "payload" in changes and self._same_payload(new.job_type, new.payload,
                                                            row["payload"]):
                del changes["payload"]  # sealed again with a fresh nonce: not a change
            if not changes:
                done.unchanged.append(spec.name)
                continue
            if any(k in changes for k in RETIMING):
                changes["next_fire_at"] = new.next_fire_at
            await store.update(row["id"], changes)
            done.updated.append(spec.name)
        return done


def _declared(spec: ScheduleSpec) -> ScheduleCreate:
    job = {k: v for k, v in (("job_type", spec.job_type), ("payload", spec.payload),
                             ("priority", spec.priority), ("max_retries", spec.max_retries),
                             ("timeout_seconds", spec.timeout_seconds)) if v is not None}
    return ScheduleCreate.model_validate({
        "name": spec.name, "cron": spec.cron, "timezone": spec.timezone, "job": job,
        "paused": spec.paused, "overlap": spec.overlap, "misfire": spec.misfire,
        "start_at": spec.start_at, "end_at": spec.end_at})


def _now() -> datetime:
    return datetime.now(UTC)
