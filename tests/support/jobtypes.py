"""Job types the tests register (through AJS_JOB_MODULES, like a user's own module).

``record`` writes each run into the ``runs`` table of the test's schema, so a test can
count executions after Redis was flushed or a worker was killed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, model_validator

from shared.registry import Backoff, JobContext, PermanentError, RetryableError, job_type


class Nothing(BaseModel):
    tag: str | None = None


class Sleep(BaseModel):
    seconds: float = 0.0
    tag: str | None = None


class Flaky(BaseModel):
    fail_times: int = 1
    permanent: bool = False
    retry_after: float | None = None


RUNS_DDL = """CREATE TABLE IF NOT EXISTS runs (
    job_id uuid NOT NULL, attempt int NOT NULL, worker text, tag text,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at timestamptz)"""


async def _record(ctx: JobContext, tag: str | None, started: Any = None) -> None:
    await ctx.db.execute(
        "INSERT INTO runs (job_id, attempt, worker, tag) VALUES ($1, $2, $3, $4)",
        ctx.job_id, ctx.attempt, ctx.settings.worker_id, tag)


@job_type("noop", Nothing)
async def noop(payload: Nothing, ctx: JobContext) -> None:
    """Do nothing."""


@job_type("record", Sleep, max_retries=5)
async def record(payload: Sleep, ctx: JobContext) -> dict[str, Any]:
    """Record the run in the runs table, then sleep."""
    await _record(ctx, payload.tag)
    if payload.seconds:
        await asyncio.sleep(payload.seconds)
    await ctx.db.execute(
        "UPDATE runs SET ended_at = clock_timestamp() WHERE job_id = $1 AND attempt = $2",
        ctx.job_id, ctx.attempt)
    return {"slept": payload.seconds}


@job_type("flaky", Flaky, backoff=Backoff(base=0.2, factor=2.0, jitter=0.0))
async def flaky(payload: Flaky, ctx: JobContext) -> dict[str, Any]:
    """Fail the first ``fail_times`` attempts."""
    await _record(ctx, None)
    if ctx.attempt <= payload.fail_times:
        if payload.permanent:
            raise PermanentError(f"attempt {ctx.attempt} refused for good")
        raise RetryableError(f"attempt {ctx.attempt} failed", retry_after=payload.retry_after)
    return {"attempt": ctx.attempt}


@job_type("broken", Nothing, backoff=Backoff(base=0.1, factor=1.0, jitter=0.0), max_retries=2)
async def broken(payload: Nothing, ctx: JobContext) -> None:
    """Always raise an unexpected error."""
    await _record(ctx, payload.tag)
    raise ValueError("boom")


class Doomed(BaseModel):
    seconds: float = 0.0
    boom_in_worker: bool = False

    @model_validator(mode="after")
    def _explode_outside_the_handler(self) -> Doomed:
        # Not a ValueError: pydantic lets a TypeError through, as a bug in a user's model
        # would. The API never sees it (the flag is set in the row afterwards).
        if self.boom_in_worker:
            raise TypeError("a bug in the payload model")
        return self


@job_type("doomed", Doomed, max_retries=1, backoff=Backoff(base=0.1, factor=1.0, jitter=0.0))
async def doomed(payload: Doomed, ctx: JobContext) -> None:
    """Sleep, then fail for good (the cancel rule must still win if a cancel came first)."""
    await _record(ctx, None)
    await asyncio.sleep(payload.seconds)
    raise PermanentError("this job can never succeed")
