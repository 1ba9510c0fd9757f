"""/workers: the workers alive, what each runs, and the rate and concurrency limits in force.

Read from Redis: each worker's presence record (renewed every heartbeat, gone three beats
after the worker stops: ``shared/queue/presence.py``) and each limited type's counters.
Workers serve every namespace: a credential bound to one sees the workers and how many
jobs each runs, but not which (other tenants' job ids are not its to see).
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from functions.api.auth import READ, Caller, Scope
from functions.api.deps import Service
from shared.queue.presence import LimitInForce, WorkerPresence

router = APIRouter(tags=["workers"])


class Workers(BaseModel):
    workers: list[WorkerPresence] = Field(description="By worker id.")
    limits: list[LimitInForce] = Field(
        description="Every job type with a rate or concurrency limit, by type.")


@router.get("/workers", response_model=Workers,
            summary="Workers alive with the jobs they run, and the limits in force",
            dependencies=[Scope(READ)])
async def workers(service: Service, caller: Caller) -> Workers:
    alive, limits = await service.workers()
    if caller.namespace is not None:
        alive = [w.model_copy(update={"running": []}) for w in alive]
    return Workers(workers=alive, limits=limits)
