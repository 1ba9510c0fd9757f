"""The benchmark's no-op job type, registered like a user's module (``AJS_JOB_MODULES``).

The handler's first and only statement reports the start to the recorder, so everything
the drain and latency figures see is the scheduler's own cost: enqueue, claim, lock,
start the attempt, run, settle.
"""

from __future__ import annotations

from pydantic import BaseModel

from bench import stages
from bench.recorder import recorder
from shared.registry import JobContext, job_type

NOOP = "bench_noop"

if stages.ENABLED:
    stages.install()


class Stamp(BaseModel):
    t_enq: float  # the client's time.time() right before the enqueue call; < 0: probe


@job_type(NOOP, Stamp, max_retries=0)
async def bench_noop(payload: Stamp, ctx: JobContext) -> None:
    """Record the start, do nothing else."""
    recorder.record(payload.t_enq)
    if stages.ENABLED and payload.t_enq >= 0:
        stages.record(ctx.job_id, payload.t_enq)
        if recorder.count == recorder.expect:
            stages.dump(recorder.out)
