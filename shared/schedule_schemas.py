"""Request and response bodies of /schedules (pydantic), also used for schedules declared
in code (``shared.registry.schedule``), so both are checked by the same rules."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from shared.api_schemas import MIN_TIMEOUT_SECONDS, NAME_PATTERN, in_window
from shared.core.schedules import MAX_CRON_LENGTH, CronError, check_cron, zone
from shared.core.status import Status

LATEST = datetime(2200, 1, 1, tzinfo=UTC)  # start/end dates beyond this are a typo
Overlap = Literal["allow", "skip"]
Misfire = Literal["run_once", "skip"]


def _cron(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        check_cron(value)
    except CronError as exc:
        raise ValueError(f"invalid cron expression: {exc}") from None
    return " ".join(value.split())


def _zone(value: str | None) -> str | None:
    if value is not None:
        zone(value)  # ValueError names it
    return value


def _date(value: datetime | None) -> datetime | None:
    return in_window(value, LATEST)


def _after_start(value: datetime | None, info: ValidationInfo) -> datetime | None:
    start = info.data.get("start_at")
    if value is not None and start is not None and value <= start:
        raise ValueError("end_at must be after start_at")
    return value


class JobTemplate(BaseModel):
    """The job each fire time makes: checked at creation exactly as ``POST /jobs`` is."""

    model_config = ConfigDict(extra="forbid")

    job_type: str = Field(min_length=1, max_length=100, description="A registered job type.")
    payload: dict[str, Any] = Field(default_factory=dict,
                                    description="Validated against the job type's model.")
    priority: int | None = Field(None, ge=1, le=10, strict=True,
                                 description="1 is highest; default: the type's (5).")
    max_retries: int | None = Field(None, ge=0, le=100, strict=True)
    timeout_seconds: float | None = Field(None, ge=MIN_TIMEOUT_SECONDS, le=86400,
                                          allow_inf_nan=False)


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "nightly-report",
        "cron": "30 2 * * *",
        "timezone": "Europe/Berlin",
        "job": {"job_type": "report_generation", "payload": {"report": "job_activity"}},
        "overlap": "skip",
        "misfire": "run_once",
    }]})

    name: str = Field(min_length=1, max_length=200, pattern=NAME_PATTERN,
                      description="Unique; also the schedule label of its metrics.")
    cron: str = Field(
        min_length=1, max_length=MAX_CRON_LENGTH,
        description="5 fields (minute hour day month weekday), 6 with a leading seconds "
        "field, or @yearly, @monthly, @weekly, @daily, @hourly.")
    timezone: str = Field("UTC", max_length=64, description="IANA zone the cron runs in.")
    job: JobTemplate
    paused: bool = False
    overlap: Overlap = Field("allow", description="skip: a run whose previous run of this "
                             "schedule is still running is skipped when it would start.")
    misfire: Misfire = Field("run_once", description="After an outage: run_once makes one "
                             "run for all missed fire times; skip makes none.")
    start_at: AwareDatetime | None = Field(None, description="No fire time before this.")
    end_at: AwareDatetime | None = Field(None, description="No fire time after this.")

    _check_cron = field_validator("cron")(_cron)
    _check_zone = field_validator("timezone")(_zone)
    _check_dates = field_validator("start_at", "end_at")(_date)
    _check_end = field_validator("end_at")(_after_start)


class ScheduleUpdate(BaseModel):
    """Only what is given changes. A new ``job`` replaces the whole template."""

    model_config = ConfigDict(extra="forbid")

    cron: str | None = Field(None, min_length=1, max_length=MAX_CRON_LENGTH)
    timezone: str | None = Field(None, max_length=64)
    job: JobTemplate | None = None
    paused: bool | None = None
    overlap: Overlap | None = None
    misfire: Misfire | None = None
    start_at: AwareDatetime | None = None
    end_at: AwareDatetime | None = None

    _check_cron = field_validator("cron")(_cron)
    _check_zone = field_validator("timezone")(_zone)
    _check_dates = field_validator("start_at", "end_at")(_date)
    _check_end = field_validator("end_at")(_after_start)


class ScheduleRun(BaseModel):
    job_id: uuid.UUID
    fire_time: datetime
    status: Status
    status_reason: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ScheduleOut(BaseModel):
    id: uuid.UUID
    namespace: str | None = Field(None, description="The tenant whose schedule it is.")
    name: str
    cron: str
    timezone: str
    job: JobTemplate
    queue: str
    paused: bool
    overlap: Overlap
    misfire: Misfire
    start_at: datetime | None = None
    end_at: datetime | None = None
    source: Literal["api", "code"]
    next_fire_times: list[datetime] = Field(
        default_factory=list, description="The next fire times not yet made into jobs.")
    last_runs: list[ScheduleRun] = Field(
        default_factory=list, description="The latest runs, newest first (detail only).")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Any, next_fire_times: list[datetime],
           runs: list[Any] | None = None) -> ScheduleOut:
        data = dict(row)
        data["job"] = JobTemplate(job_type=data["job_type"], payload=data["payload"],
                                  priority=data["priority"], max_retries=data["max_retries"],
                                  timeout_seconds=data["timeout_seconds"])
        data["next_fire_times"] = next_fire_times
        data["last_runs"] = [ScheduleRun(job_id=r["id"], **{k: r[k] for k in (
            "fire_time", "status", "status_reason", "started_at", "finished_at")})
            for r in runs or []]
        return cls.model_validate(data)


class SchedulePage(BaseModel):
    items: list[ScheduleOut]
    next_cursor: str | None = None
