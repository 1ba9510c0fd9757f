"""A job type for the console's browser tests, loaded only by the processes they start
(the API under uvicorn and ``python -m worker``), never by the test process itself, so
the shared registry of the other tests does not grow.

``fails_first_run`` fails for good on its first run and succeeds on any later one (a
redrive): the shape of a job that died while its downstream was down.
"""

from __future__ import annotations

from shared.registry import JobContext, PermanentError, job_type
from tests.support.jobtypes import Nothing


@job_type("fails_first_run", Nothing, max_retries=0)
async def fails_first_run(payload: Nothing, ctx: JobContext) -> dict[str, int]:
    """Fail for good the first time, succeed after a redrive."""
    earlier = await ctx.db.fetchval("SELECT count(*) FROM runs WHERE job_id = $1", ctx.job_id)
    await ctx.db.execute("INSERT INTO runs (job_id, attempt, worker, tag) "
                         "VALUES ($1, $2, $3, $4)", ctx.job_id, ctx.attempt,
                         ctx.settings.worker_id, payload.tag)
    if not earlier:
        raise PermanentError("the downstream service was down")
    return {"runs": int(earlier) + 1}
