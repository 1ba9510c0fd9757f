"""/dead-letters: the jobs whose retries ran out (status FAILED): list, redrive, purge."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body
from fastapi.responses import Response

from functions.api import listing
from functions.api.auth import ADMIN, READ, Caller, Scope
from functions.api.deps import JobTypeFilter, Service
from functions.api.listing import Cursor, Fields, FieldsQuery, Limit
from shared.api_schemas import CountResult, ErrorResponse, JobOut, JobPage, RedriveRequest
from shared.core.status import Status
from shared.errors import Conflict

router = APIRouter(prefix="/dead-letters", tags=["dead letter queue"])


@router.get("", response_model=JobPage, responses={422: {"model": ErrorResponse}},
            summary="List dead-lettered jobs, newest first (pages bounded in count and bytes)",
            dependencies=[Scope(READ)])
async def list_dead(
    service: Service,
    caller: Caller,
    job_type: JobTypeFilter = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    fields: FieldsQuery = Fields.full,
) -> Response:
    return await listing.page(service, status=Status.FAILED, job_type=job_type, limit=limit,
                              cursor=cursor, fields=fields, namespace=caller.namespace)


@router.post("/redrive", response_model=CountResult,
             summary="Redrive every dead job (optionally of one type)",
             dependencies=[Scope(ADMIN)])
async def redrive_all(service: Service, caller: Caller,
                      body: Annotated[RedriveRequest | None, Body()] = None) -> CountResult:
    rows = await service.redrive(job_type=body.job_type if body else None,
                                 namespace=caller.namespace)
    return CountResult(count=len(rows))


@router.post("/{job_id}/redrive", response_model=JobOut,
             responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
             summary="Redrive one dead job with a fresh set of attempts",
             dependencies=[Scope(ADMIN)])
async def redrive_one(job_id: uuid.UUID, service: Service, caller: Caller) -> JobOut:
    rows = await service.redrive(job_ids=[job_id], namespace=caller.namespace)
    if not rows:
        row = await service.get(job_id, caller.namespace)  # 404 if unknown (or not ours)
        raise Conflict(f"job {job_id} is {row['status']}, not in the dead letter queue")
    return JobOut.of(service.registry.redacted(await service.get(job_id, caller.namespace)))


@router.delete("", response_model=CountResult, summary="Purge dead jobs (optionally of a type)",
               dependencies=[Scope(ADMIN)])
async def purge(service: Service, caller: Caller,
                job_type: JobTypeFilter = None) -> CountResult:
    return CountResult(count=await service.purge_dead(job_type, caller.namespace))
