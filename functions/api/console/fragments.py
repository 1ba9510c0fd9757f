"""The console's data: HTML fragments rendered from the same service and stores as the
JSON API, under the same rules: each route declares its scope, a caller bound to a
namespace sees only its own jobs, and a payload is shown as its job type redacts it
(``registry.redacted``, then the API's own models), never as stored.

The console's script fetches a fragment with the user's credential and swaps it into
the page; a fragment that holds ``data-final`` tells it to stop refreshing.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from functions.api.auth import READ, Caller, Scope
from functions.api.console.rendering import render
from functions.api.deps import JobTypeFilter, Service, decode_cursor, encode_cursor
from functions.api.listing import CreatedAfter, CreatedBefore, Cursor, IdSearch, narrowing
from functions.api.schedules import Schedules
from shared.api_schemas import JobOut, JobSummary, Transition
from shared.core.status import CANCELLABLE, TERMINAL, Status
from shared.schedule_schemas import ScheduleOut
from shared.scopes import NAMESPACE_PATTERN
from shared.store.insights import Window

router = APIRouter(prefix="/console/fragments", include_in_schema=False)

PAGE_SIZE = 50
SCHEDULE_PAGE_SIZE = 100
SCHEDULE_RUNS_SHOWN = 3


def _fragment(template: str, **context: Any) -> HTMLResponse:
    response = render(f"fragments/{template}.html", **context)
    response.headers["Cache-Control"] = "no-store"  # data, per caller
    return response


@router.get("/whoami", dependencies=[Scope(READ)])
async def whoami(caller: Caller) -> HTMLResponse:
    """Who the pasted credential is: the header shows it, and the script names its
    scopes when an action is refused for lack of one."""
    return _fragment("whoami", caller=caller, scopes=sorted(caller.scopes))


@router.get("/overview", dependencies=[Scope(READ)])
async def overview(service: Service, caller: Caller) -> HTMLResponse:
    """Counts (exact, without a scan), activity over the last hour and day, queue
    depths, workers alive and limits in force. The last three are the fleet's, shared by
    every namespace: only an unbound caller sees them (a worker's running jobs may be
    another tenant's)."""
    data, hour, day = await asyncio.gather(
        service.stats(caller.namespace), service.activity(Window.hour, caller.namespace),
        service.activity(Window.day, caller.namespace))
    workers, limits = await service.workers() if caller.namespace is None else ([], [])
    by_status: dict[str, int] = data["by_status"]
    done = by_status[Status.COMPLETED] + by_status[Status.FAILED]
    return _fragment(
        "overview", statuses=[s.value for s in Status], by_status=by_status,
        by_type=dict(sorted(data["by_type"].items())), queues=data["queues"],
        success_rate=(by_status[Status.COMPLETED] / done) if done else None,
        retries=data["retries"], namespace=caller.namespace, windows=[hour, day],
        workers=workers, limits=limits, fleet=caller.namespace is None,
        now=datetime.now(UTC))


@router.get("/jobs", dependencies=[Scope(READ)])
async def jobs(
    service: Service,
    caller: Caller,
    request: Request,
    status: Annotated[Status | None, Query()] = None,
    job_type: JobTypeFilter = None,
    id_search: IdSearch = None,
    namespace: Annotated[str | None, Query(pattern=NAMESPACE_PATTERN)] = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    cursor: Cursor = None,
) -> HTMLResponse:
    """A page of jobs, newest first (without payloads), with the JSON list's filters
    (``id``: a job id or its first hex digits). A caller bound to a namespace lists its
    own whatever ``namespace`` says."""
    narrow = narrowing(created_after, created_before, id_search)
    store = await service.stores.store()
    rows, more = await store.list_page(
        status=status, job_type=job_type, before_seq=decode_cursor(cursor),
        limit=PAGE_SIZE, max_bytes=service.settings.api_page_max_bytes, summary=True,
        namespace=caller.namespace if caller.namespace is not None else namespace,
        narrow=narrow)
    items = [JobSummary.of(service.registry.redacted(r)) for r in rows]
    # The pager's links keep the filters: the shell passes its query on to the fragment.
    query = {k: v for k, v in request.query_params.items() if k != "cursor"}
    next_query = ({**query, "cursor": encode_cursor(rows[-1]["seq"])}
                  if more and rows else None)
    return _fragment("jobs", items=items, next_query=next_query,
                     first_query=query if cursor else None,
                     cancellable={s.value for s in CANCELLABLE} | {Status.PROCESSING.value},
                     now=datetime.now(UTC))


@router.get("/jobs/{job_id}", dependencies=[Scope(READ)])
async def job(job_id: uuid.UUID, service: Service, caller: Caller) -> HTMLResponse:
    row = await service.get(job_id, caller.namespace)  # 404: unknown, or another tenant's
    job = JobOut.of(service.registry.redacted(row))
    history = [Transition.model_validate(dict(h)) for h in await service.history(job_id)]
    now = datetime.now(UTC)
    final = job.status in TERMINAL
    steps = []
    for i, step in enumerate(history):
        # How long the job stayed in the state this step entered.
        until = history[i + 1].at if i + 1 < len(history) else (None if final else now)
        steps.append({"step": step, "lasted": None if until is None else until - step.at,
                      "current": i + 1 == len(history) and not final})
    return _fragment("job", job=job, steps=steps, final=final, now=now,
                     cancellable=job.status in CANCELLABLE or (
                         job.status is Status.PROCESSING and not job.cancel_requested))


@router.get("/dead-letters", dependencies=[Scope(READ)])
async def dead_letters(service: Service, caller: Caller,
                       job_type: JobTypeFilter = None) -> HTMLResponse:
    """Dead jobs grouped by type and error, largest group first, with the newest few of
    each to redrive one by one."""
    found = await service.dead_letter_groups(caller.namespace, job_type)
    data = await service.stats(caller.namespace)
    dead_by_type = {t: counts.get(Status.FAILED, 0) for t, counts in data["by_type"].items()
                    if counts.get(Status.FAILED, 0)}
    return _fragment("dead-letters", found=found, dead_by_type=dead_by_type,
                     now=datetime.now(UTC))


@router.get("/schedules", dependencies=[Scope(READ)])
async def schedules(schedules: Schedules, caller: Caller) -> HTMLResponse:
    rows = await schedules.page(after=None, limit=SCHEDULE_PAGE_SIZE + 1,
                                namespace=caller.namespace)
    items = []
    for row in rows[:SCHEDULE_PAGE_SIZE]:
        runs = await schedules.runs(row["id"])
        items.append(ScheduleOut.of(schedules.jobs.registry.redacted(row),
                                    schedules.next_times(row), runs[:SCHEDULE_RUNS_SHOWN]))
    return _fragment("schedules", items=items, more=len(rows) > SCHEDULE_PAGE_SIZE,
                     now=datetime.now(UTC))
