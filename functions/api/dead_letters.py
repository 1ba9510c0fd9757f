"""/dead-letters: the jobs whose retries ran out (status FAILED): list, redrive, purge."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body
from fastapi.responses import Response

from functions.api import listing
from functions.api.auth import ADMIN, READ, Caller, NamespaceQuery, Scope, in_view
from functions.api.deps import JobTypeFilter, Service
from functions.api.listing import Cursor, Fields, FieldsQuery, Limit
from shared.api_schemas import (
    CountResult,
    ErrorResponse,
    JobOut,
    JobPage,
    RedriveRequest,
    RedriveResult,
)
from shared.core.status import Status
from shared.errors import Conflict
from shared.store.insights import DeadLetterGroups

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


@router.get("/groups", response_model=DeadLetterGroups,
            responses={403: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
            summary="Dead jobs grouped by type and the first line of their error",
            description="Largest group first, each with its count, latest failure and up "
            "to 5 job ids. Built from the newest 10,000 dead jobs (`complete` says whether "
            "that was all of them); `total` is exact.",
            dependencies=[Scope(READ)])
async def groups(service: Service, caller: Caller, job_type: JobTypeFilter = None,
                 namespace: NamespaceQuery = None) -> DeadLetterGroups:
    return await service.dead_letter_groups(in_view(caller, namespace), job_type)


@router.post("/redrive", response_model=RedriveResult, response_model_exclude_none=True,
             responses={422: {"model": ErrorResponse}},
             summary="Redrive every dead job, those of one type, or a selection of ids",
             dependencies=[Scope(ADMIN)])
async def redrive_all(service: Service, caller: Caller,
                      body: Annotated[RedriveRequest | None, Body()] = None) -> RedriveResult:
    if body is not None and body.ids is not None:
        wanted = list(dict.fromkeys(body.ids))
        rows = await service.redrive(job_ids=wanted, job_type=body.job_type,
                                     namespace=caller.namespace)
        done = {str(r["id"]) for r in rows}
        return RedriveResult(count=len(done), redriven=[i for i in wanted if str(i) in done],
                             skipped=[i for i in wanted if str(i) not in done])
    rows = await service.redrive(job_type=body.job_type if body else None,
                                 namespace=caller.namespace)
    return RedriveResult(count=len(rows))


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
