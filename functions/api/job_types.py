"""/job-types: every registered type with its payload JSON Schema and its limits."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from functions.api.auth import READ, Scope
from functions.api.deps import Service

router = APIRouter(tags=["job types"])


class JobTypeOut(BaseModel):
    name: str
    description: str
    queue: str
    priority: int
    timeout_seconds: float
    max_retries: int
    rate_limit: dict[str, float] | None
    concurrency_limit: int | None
    payload_schema: dict[str, Any]


@router.get("/job-types", response_model=list[JobTypeOut], dependencies=[Scope(READ)])
async def job_types(service: Service) -> list[JobTypeOut]:
    s = service.settings
    return [
        JobTypeOut(
            name=jt.name, description=jt.description, queue=jt.queue, priority=jt.priority,
            timeout_seconds=jt.timeout_seconds or s.default_timeout_seconds,
            max_retries=jt.max_retries if jt.max_retries is not None else s.default_max_retries,
            rate_limit=({"limit": jt.rate_limit[0], "per_seconds": jt.rate_limit[1]}
                        if jt.rate_limit else None),
            concurrency_limit=jt.concurrency_limit,
            payload_schema=jt.payload_model.model_json_schema(),
        )
        for jt in service.registry.all()
    ]
