"""The job type registry: what a job type is, and where the API and worker find it.

A job type is a name, a pydantic payload model, an async handler and its defaults
(priority, timeout, retries, backoff) and limits (a rate limit and a concurrency limit,
both enforced across all workers in Redis). The five seed types live in
``shared.job_types``; users register their own in their own modules, named in
``AJS_JOB_MODULES``, with the same decorator::

    from pydantic import BaseModel
    from shared.registry import JobContext, job_type

    class Resize(BaseModel):
        url: str

    @job_type("thumbnail", Resize, rate_limit=(20, 1.0), concurrency_limit=4)
    async def thumbnail(payload: Resize, ctx: JobContext) -> dict:
        ...

Recurring schedules can be declared beside them (synced by name at start; see the README,
"Recurring schedules")::

    schedule("nightly-thumbnails", "30 2 * * *", "thumbnail", {"url": "..."},
             timezone="Europe/Berlin", overlap="skip")

Importing this module is cheap on purpose: the API validates payloads with the models
but never imports what the handlers need.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from shared.queue.redis_queue import RedisClient, TypeLimit

if TYPE_CHECKING:
    import asyncpg

    from shared.settings import Settings


class JobError(Exception):
    """Base of the errors a handler raises on purpose."""


class PermanentError(JobError):
    """The job can never succeed (bad input, refused target): straight to the dead
    letter queue, no retry."""


class RetryableError(JobError):
    """Try again later; ``retry_after`` (seconds) overrides the backoff when given."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float | None = None  # None: the configured default
    factor: float | None = None
    max_delay: float | None = None
    jitter: float | None = None


@dataclass
class JobContext:
    """What a handler knows about the attempt it runs, and the worker's shared clients."""

    job_id: str
    job_type: str
    attempt: int
    max_retries: int
    timeout_seconds: float
    settings: Settings
    db: asyncpg.Pool
    redis: RedisClient  # a RedisCluster under AJS_REDIS_CLUSTER: keep a call's keys in one slot
    logger: Any
    resources: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Any, JobContext], Awaitable[Any]]
# Payload hooks (all optional): ``seal`` turns a validated payload into what is stored
# (secrets encrypted), ``unseal`` turns a stored payload back into one the model accepts,
# ``redact`` turns a stored payload into what an API answer may show.
Seal = Callable[[dict[str, Any], "Settings"], dict[str, Any]]
Redact = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class JobType:
    name: str
    payload_model: type[BaseModel]
    handler: Handler
    description: str = ""
    priority: int = 5
    timeout_seconds: float | None = None
    max_retries: int | None = None
    backoff: Backoff = Backoff()
    rate_limit: tuple[int, float] | None = None  # (starts, per seconds)
    concurrency_limit: int | None = None
    queue: str = "default"
    # Seconds a finished job of this type is kept, by status ("COMPLETED", "FAILED",
    # "CANCELLED"; 0: for ever); the AJS_RETENTION_* settings for any status not given.
    retention: dict[str, float] | None = None
    seal_payload: Seal | None = None
    unseal_payload: Seal | None = None
    redact_payload: Redact | None = None

    @property
    def limit(self) -> TypeLimit:
        """This type's limits as the claim script takes them (zeros: unlimited)."""
        rate, per = self.rate_limit or (0, 1.0)
        return TypeLimit(self.name, self.concurrency_limit or 0, rate, int(per * 1000))

    def parse(self, payload: Any, settings: Settings | None = None) -> BaseModel:
        """The payload model of a client's payload or of a stored (sealed) one.

        ``settings`` reach the model's validators as context (allowed destinations, the
        payload key); without them the process's settings apply. A sealed payload that
        cannot be opened (key missing or changed) is a ValidationError like any other
        invalid payload, so the worker fails the job permanently instead of crashing.
        """
        if settings is None:
            from shared.settings import get_settings

            settings = get_settings()
        if self.unseal_payload is not None and isinstance(payload, dict):
            try:
                payload = self.unseal_payload(payload, settings)
            except ValueError as exc:
                raise ValidationError.from_exception_data(self.payload_model.__name__, [
                    {"type": "value_error", "loc": (), "input": "(sealed)",
                     "ctx": {"error": exc}}]) from None
        return self.payload_model.model_validate(payload, context={"settings": settings})

    def seal(self, payload: dict[str, Any], settings: Settings) -> dict[str, Any]:
        """What to store for a validated payload (called once, before the insert)."""
        return self.seal_payload(payload, settings) if self.seal_payload else payload

    def redact(self, stored: dict[str, Any]) -> dict[str, Any]:
        """What an API answer may show of a stored payload."""
        return self.redact_payload(stored) if self.redact_payload else stored


@dataclass(frozen=True)
class ScheduleSpec:
    """A recurring schedule declared in code: the fields of ``POST /schedules``."""

    name: str
    cron: str
    job_type: str
    payload: dict[str, Any] = field(default_factory=dict)
    timezone: str = "UTC"
    priority: int | None = None
    max_retries: int | None = None
    timeout_seconds: float | None = None
    paused: bool = False  # at creation only: afterwards PATCH decides
    overlap: str = "allow"
    misfire: str = "run_once"
    start_at: Any = None
    end_at: Any = None


class Registry:
    def __init__(self) -> None:
        self._types: dict[str, JobType] = {}
        self._schedules: dict[str, ScheduleSpec] = {}

    def add(self, jt: JobType) -> JobType:
        if not 1 <= jt.priority <= 10:
            raise ValueError(f"job type {jt.name!r}: priority must be 1..10")
        if jt.rate_limit and (jt.rate_limit[0] < 1 or jt.rate_limit[1] <= 0):
            raise ValueError(f"job type {jt.name!r}: rate_limit must be (n >= 1, seconds > 0)")
        if jt.concurrency_limit is not None and jt.concurrency_limit < 1:
            raise ValueError(f"job type {jt.name!r}: concurrency_limit must be >= 1")
        for status, seconds in (jt.retention or {}).items():
            if status not in ("COMPLETED", "FAILED", "CANCELLED") or seconds < 0:
                raise ValueError(f"job type {jt.name!r}: retention maps COMPLETED, FAILED or "
                                 "CANCELLED to seconds >= 0")
        if "|" in jt.name or ":" in jt.name or not jt.name:
            raise ValueError(f"job type name {jt.name!r} must be non-empty without '|' or ':'")
        self._types[jt.name] = jt
        return jt

    def get(self, name: str) -> JobType | None:
        return self._types.get(name)

    def remove(self, name: str) -> JobType | None:
        """Forget a type (tests that register their own put the registry back this way)."""
        return self._types.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._types)

    def all(self) -> list[JobType]:
        return [self._types[n] for n in self.names()]

    def redacted(self, row: Any) -> dict[str, Any]:
        """A job row as an answer may show it: its payload through its type's ``redact``.
        Rows of a type this process does not know are shown as stored."""
        data = dict(row)
        jt = self._types.get(data.get("job_type", ""))
        if jt is not None and isinstance(data.get("payload"), dict):
            data["payload"] = jt.redact(data["payload"])
        return data

    def add_schedule(self, spec: ScheduleSpec) -> ScheduleSpec:
        """Declare a schedule (checked when it is synced, by the API's rules)."""
        self._schedules[spec.name] = spec
        return spec

    def remove_schedule(self, name: str) -> ScheduleSpec | None:
        return self._schedules.pop(name, None)

    def schedules(self) -> list[ScheduleSpec]:
        return [self._schedules[n] for n in sorted(self._schedules)]

    def limits(self, queue: str | None = None) -> list[TypeLimit]:
        """Every type (of ``queue``) with its limits, for the claim script."""
        return [jt.limit for jt in self.all() if queue is None or jt.queue == queue]


registry = Registry()


def job_type(
    name: str, payload_model: type[BaseModel], **options: Any
) -> Callable[[Handler], Handler]:
    """Register the decorated async function as the handler of job type ``name``."""

    def register(handler: Handler) -> Handler:
        registry.add(JobType(name=name, payload_model=payload_model, handler=handler,
                             description=options.pop("description", None)
                             or (handler.__doc__ or "").strip().split("\n")[0],
                             **options))
        return handler

    return register


def schedule(name: str, cron: str, job_type: str, payload: dict[str, Any] | None = None,
             **options: Any) -> ScheduleSpec:
    """Declare a recurring schedule in code (options: timezone, priority, max_retries,
    timeout_seconds, paused, overlap, misfire, start_at, end_at)."""
    return registry.add_schedule(ScheduleSpec(name, cron, job_type, dict(payload or {}),
                                              **options))


def load(modules: Iterable[str] = ()) -> Registry:
    """Import the seed job types and the user's modules (which register themselves)."""
    importlib.import_module("shared.job_types")
    for module in modules:
        importlib.import_module(module)
    return registry
