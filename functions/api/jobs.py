"""/jobs: create (one or a batch), read, list, stats, cancel."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response

from functions.api import batch_body, listing
from functions.api.auth import READ, WRITE, Caller, NamespaceQuery, Scope, in_view
from functions.api.deps import JobTypeFilter, Service
from functions.api.listing import (
    CreatedAfter,
    CreatedBefore,
    Cursor,
    Fields,
    FieldsQuery,
    IdSearch,
    Limit,
)
from shared.api_schemas import (
    BatchResult,
    ErrorResponse,
    JobCreate,
    JobDetail,
    JobOut,
    JobPage,
    QueueStats,
    Stats,
    Transition,
)
from shared.core.status import Status
from shared.errors import PayloadTooLarge
from shared.observability import metrics
from shared.store.insights import Activity, Window

router = APIRouter(prefix="/jobs", tags=["jobs"])

# No control characters: PostgreSQL text refuses NUL, and the key is echoed in logs.
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$",
    description="Repeat a create safely: the same key and body return the original job.")]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error responses a route documents: only those it can return."""
    return {code: {"model": ErrorResponse} for code in codes}


def _check_payload_sizes(specs: list[JobCreate], limit: int, batch: bool) -> None:
    for i, spec in enumerate(specs):
        size = len(json.dumps(spec.payload, separators=(",", ":")).encode())
        if size > limit:
            loc = ["body", "jobs", i, "payload"] if batch else ["body", "payload"]
            raise PayloadTooLarge(f"payload is {size} bytes, at most {limit} allowed",
                                  [{"loc": loc, "msg": f"at most {limit} bytes",
                                    "type": "too_large"}])


REPLAYED = {"Idempotent-Replayed": {"description": "true: an earlier request with this "
                                    "Idempotency-Key and body made the job(s)",
                                    "schema": {"type": "string", "enum": ["true"]}}}


@router.post("", status_code=201, response_model=JobOut, responses={
    **errors(409, 413, 422),
    201: {"description": "Created", "headers": {"Location": {
        "description": "The job's URL", "schema": {"type": "string"}}}},
    200: {"model": JobOut, "description": "Idempotent replay: the job made earlier",
          "headers": REPLAYED}},
    summary="Create a job", dependencies=[Scope(WRITE)])
async def create_job(spec: JobCreate, service: Service, caller: Caller,
                     idempotency_key: IdempotencyKey = None) -> Response:
    _check_payload_sizes([spec], service.settings.max_payload_bytes, batch=False)
    row, created = await service.create(spec, idempotency_key, namespace=caller.namespace)
    job = JobOut.of(service.registry.redacted(row))
    headers = {"Location": f"{service.settings.api_prefix}/jobs/{job.id}"}
    if created:
        metrics.jobs_created_total.labels(job.job_type).inc()
    else:
        headers["Idempotent-Replayed"] = "true"
    # Encoded by pydantic-core straight from the model just built: returning the model
    # would have FastAPI validate it again against response_model first.
    return Response(job.model_dump_json(), status_code=201 if created else 200,
                    headers=headers, media_type="application/json")


@router.post("/batch", status_code=201, response_model=BatchResult, responses={
    **errors(409, 413, 422),
    200: {"model": BatchResult, "description": "Idempotent replay: the jobs made earlier",
          "headers": REPLAYED}},
             summary="Create up to 1,000 jobs, all or nothing", dependencies=[Scope(WRITE)],
             openapi_extra=batch_body.request_body_schema())
async def create_batch(request: Request, service: Service, caller: Caller,
                       idempotency_key: IdempotencyKey = None) -> Response:
    batch = await batch_body.parse_batch(await request.body())
    _check_payload_sizes(batch.jobs, service.settings.max_payload_bytes, batch=True)
    rows, created = await service.create_many(batch.jobs, idempotency_key,
                                              namespace=caller.namespace)
    result = BatchResult(jobs=[JobOut.of(service.registry.redacted(r)) for r in rows])
    headers = {}
    if created:
        for job in result.jobs:
            metrics.jobs_created_total.labels(job.job_type).inc()
    else:
        headers["Idempotent-Replayed"] = "true"
    # Encoded by pydantic-core in one step: FastAPI's dict-then-json.dumps of 1,000 jobs
    # held the event loop for half a second.
    return Response(result.model_dump_json(), status_code=201 if created else 200,
                    headers=headers, media_type="application/json")


@router.get("/stats", response_model=Stats, summary="Counts, queue depth, success rate",
            dependencies=[Scope(READ)])
async def stats(service: Service, caller: Caller) -> Stats:
    data = await service.stats(caller.namespace)
    queues = {name: QueueStats(ready_by_priority=depth["ready_by_priority"],
                               delayed=depth["delayed"], processing=depth["leased"])
              for name, depth in data["queues"].items()}
    done = data["by_status"][Status.COMPLETED] + data["by_status"][Status.FAILED]
    return Stats(
        by_status=data["by_status"], by_type=data["by_type"], queues=queues,
        success_rate=(data["by_status"][Status.COMPLETED] / done) if done else None,
        retries=data["retries"], dead_letter_size=data["by_status"][Status.FAILED],
    )


@router.get("/activity", response_model=Activity, responses=errors(403, 422),
            summary="Jobs created, finished and retried over the last hour or day",
            description="Totals, by type, and per bucket (12 of 5 minutes for `1h`, 24 of an "
            "hour for `24h`, aligned to UTC), with throughput and failure rate. Read from "
            "per-minute counts, so it answers in milliseconds however many jobs ran.",
            dependencies=[Scope(READ)])
async def activity(service: Service, caller: Caller, window: Window = Window.hour,
                   namespace: NamespaceQuery = None) -> Activity:
    return await service.activity(window, in_view(caller, namespace))


@router.get("", response_model=JobPage, responses=errors(403, 422),
            summary="List jobs, newest first (pages bounded in count and bytes)",
            description="Filters combine with each other and with the cursor. A credential "
            "bound to a namespace lists only its own jobs (naming another namespace: 403).",
            dependencies=[Scope(READ)])
@router.get("/", response_model=JobPage, include_in_schema=False, dependencies=[Scope(READ)])
async def list_jobs(
    service: Service,
    caller: Caller,
    status: Status | None = None,
    job_type: JobTypeFilter = None,
    namespace: NamespaceQuery = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    id_search: IdSearch = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    fields: FieldsQuery = Fields.full,
) -> Response:
    return await listing.page(service, status=status, job_type=job_type, limit=limit,
                              cursor=cursor, fields=fields,
                              namespace=in_view(caller, namespace),
                              narrow=listing.narrowing(created_after, created_before,
                                                       id_search))


@router.get("/{job_id:job_id}", response_model=JobDetail, responses=errors(404, 422),
            summary="Get a job", dependencies=[Scope(READ)])
async def get_job(job_id: uuid.UUID, service: Service, caller: Caller) -> JobDetail:
    row = await service.get(job_id, caller.namespace)
    history = await service.history(job_id)
    return JobDetail(**JobOut.of(service.registry.redacted(row)).model_dump(),
                     history=[Transition.model_validate(dict(h)) for h in history])


@router.delete("/{job_id:job_id}", response_model=JobOut, responses={
    **errors(404, 409, 422),
    202: {"model": JobOut, "description": "Running: its worker was signalled"}},
    summary="Cancel a job", dependencies=[Scope(WRITE)])
async def cancel_job(job_id: uuid.UUID, service: Service, response: Response,
                     caller: Caller) -> JobOut:
    outcome, row = await service.cancel(job_id, caller.namespace)
    if outcome == "requested":
        response.status_code = 202
    return JobOut.of(service.registry.redacted(row))
