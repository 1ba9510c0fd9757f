"""The API's request and response bodies (pydantic), also used by library callers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from shared.core.status import Status

# Names used as filters reach PostgreSQL as text parameters, which refuse NUL; no control
# characters at all (and, being checked by pydantic-core, no unpaired surrogates).
NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"

# Input bounds of a new job (README, "The API").
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SCHEDULE_YEARS_AHEAD = 10
MIN_TIMEOUT_SECONDS = 1.0
MAX_PAYLOAD_DEPTH = 64  # levels of nested objects and arrays (checked by the service)


def in_window(value: datetime | None, latest: datetime, latest_name: str = "") -> datetime | None:
    """``value`` in UTC if it lies between 1970 and ``latest``, else a ValueError that says
    the window (pydantic turns it into a 422 naming the field)."""
    if value is None:
        return None
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 falls before year 1 in UTC
        raise ValueError("date is out of range once converted to UTC") from None
    if not EPOCH <= value <= latest:
        until = f"{latest_name} ({latest.isoformat()})" if latest_name else latest.isoformat()
        raise ValueError(f"must be between {EPOCH.isoformat()} and {until}")
    return value


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "job_type": "email",
        "payload": {"to": "user@example.com", "subject": "Test Email",
                    "body": "This is a test email from the job scheduler"},
        "priority": 5,
    }]})

    job_type: str = Field(min_length=1, max_length=100, description="A registered job type.")
    payload: dict[str, Any] = Field(default_factory=dict,
                                    description="Validated against the job type's model.")
    # Strict: a JSON integer, not true/false or 5.0 quietly coerced into a priority.
    priority: int | None = Field(None, ge=1, le=10, strict=True,
                                 description="1 is highest; default: the type's (5).")
    scheduled_at: AwareDatetime | None = Field(
        None, description="When to run: an ISO 8601 time with a time zone, "
        f"from 1970 to {SCHEDULE_YEARS_AHEAD} years ahead. Default: now.")
    max_retries: int | None = Field(None, ge=0, le=100, strict=True)
    timeout_seconds: float | None = Field(
        None, ge=MIN_TIMEOUT_SECONDS, le=86400, allow_inf_nan=False,
        description=f"Per-attempt time limit, {MIN_TIMEOUT_SECONDS:g} s to 86,400 s.")

    @field_validator("scheduled_at", mode="before")
    @classmethod
    def _not_a_number(cls, value: Any) -> Any:
        # An ISO 8601 string (or a datetime from Python), never a number quietly read as
        # seconds since the epoch. (strict=True would refuse strings too: FastAPI
        # validates the parsed JSON in Python mode.)
        if isinstance(value, int | float):
            raise ValueError("must be an ISO 8601 date-time string with a time zone, "
                             "not a number")
        return value

    @field_validator("scheduled_at")
    @classmethod
    def _in_range(cls, value: datetime | None) -> datetime | None:
        """Year 1 would be stored as -infinity and 9999-12-31 as infinity, which nothing
        downstream can compute with: bound it at the door."""
        latest = datetime.now(UTC).replace(microsecond=0)
        latest = latest.replace(year=latest.year + SCHEDULE_YEARS_AHEAD, day=min(latest.day, 28))
        return in_window(value, latest, f"{SCHEDULE_YEARS_AHEAD} years from now")


class JobBatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[JobCreate] = Field(min_length=1, description="Up to 1,000 jobs, all or nothing.")


class JobSummary(BaseModel):
    """A job without its payload and result: what a list with ``fields=summary`` holds."""

    id: uuid.UUID
    job_type: str
    queue: str
    priority: int
    status: Status
    status_reason: str | None = None
    scheduled_at: datetime | None = None
    next_attempt_at: datetime | None = Field(
        None, description="When a PENDING or RETRYING job is due.")
    attempts: int
    max_retries: int
    timeout_seconds: float
    last_error: str | None = None
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    namespace: str | None = Field(
        None, description="The tenant whose key created the job; null: an unbound key.")

    @classmethod
    def of(cls, row: Any) -> Self:
        data = dict(row)
        data["next_attempt_at"] = data.pop("run_at", None)
        return cls.model_validate(data)


class JobOut(JobSummary):
    payload: dict[str, Any]
    result: Any = None


class Transition(BaseModel):
    from_status: Status | None
    to_status: Status
    attempt: int
    reason: str | None = None
    worker: str | None = None
    at: datetime


class JobDetail(JobOut):
    history: list[Transition] = []


class JobPage(BaseModel):
    items: list[JobOut | JobSummary] = Field(
        description="Jobs, newest first: whole (JobOut), or without payload and result "
        "(JobSummary) when asked for fields=summary.")
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` for the next page; null on the last page. A page "
        "may hold fewer than `limit` jobs (it is also bounded in bytes) and still have one.")


class BatchResult(BaseModel):
    jobs: list[JobOut]


class QueueStats(BaseModel):
    ready_by_priority: dict[int, int]
    delayed: int
    processing: int


class Stats(BaseModel):
    by_status: dict[str, int]
    by_type: dict[str, dict[str, int]]
    queues: dict[str, QueueStats]
    success_rate: float | None = Field(
        None, description="COMPLETED / (COMPLETED + FAILED); null before any job ended.")
    retries: int = Field(description="Attempts beyond the first, over all jobs.")
    dead_letter_size: int


REDRIVE_IDS_MAX = 500


class RedriveRequest(BaseModel):
    """Which dead jobs to redrive: all (no body or ``{}``), those of one type, a selection
    of ids, or the ids of the selection that are of the type."""

    model_config = ConfigDict(extra="forbid")

    job_type: str | None = Field(None, max_length=100, pattern=NAME_PATTERN,
                                 description="Only dead jobs of this type.")
    ids: list[uuid.UUID] | None = Field(
        None, min_length=1, max_length=REDRIVE_IDS_MAX,
        description=f"Only these jobs (1 to {REDRIVE_IDS_MAX}; repeats count once). An id "
        "that is not dead, not the caller's or (with job_type) of another type is reported "
        "in `skipped`.")


class RedriveResult(BaseModel):
    count: int = Field(description="Jobs redriven.")
    redriven: list[uuid.UUID] | None = Field(
        None, description="With `ids`: the jobs redriven (absent for the other forms).")
    skipped: list[uuid.UUID] | None = Field(
        None, description="With `ids`: those not redriven: not dead, unknown, or in "
        "another namespace (absent for the other forms).")


class CountResult(BaseModel):
    count: int


class ErrorDetail(BaseModel):
    loc: list[str | int] = []
    msg: str
    type: str | None = None


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = []


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
    checks: dict[str, str]
