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

Importing this module is cheap on purpose: the API validates payloads with the models
but never imports what the handlers need.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

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

    @property
    def limit(self) -> TypeLimit:
        """This type's limits as the claim script takes them (zeros: unlimited)."""
        rate, per = self.rate_limit or (0, 1.0)
        return TypeLimit(self.name, self.concurrency_limit or 0, rate, int(per * 1000))

    def parse(self, payload: Any) -> BaseModel:
        return self.payload_model.model_validate(payload)


class Registry:
    def __init__(self) -> None:
        self._types: dict[str, JobType] = {}

    def add(self, jt: JobType) -> JobType:
        if not 1 <= jt.priority <= 10:
            raise ValueError(f"job type {jt.name!r}: priority must be 1..10")
        if jt.rate_limit and (jt.rate_limit[0] < 1 or jt.rate_limit[1] <= 0):
            raise ValueError(f"job type {jt.name!r}: rate_limit must be (n >= 1, seconds > 0)")
        if jt.concurrency_limit is not None and jt.concurrency_limit < 1:
            raise ValueError(f"job type {jt.name!r}: concurrency_limit must be >= 1")
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


def load(modules: Iterable[str] = ()) -> Registry:
    """Import the seed job types and the user's modules (which register themselves)."""
    importlib.import_module("shared.job_types")
    for module in modules:
        importlib.import_module(module)
    return registry
