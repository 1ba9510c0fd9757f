"""/schedules: recurring schedules, made through the API or declared in code.

The schedules declared in code (``AJS_JOB_MODULES``) are synced into the table before this
app first serves a schedules request (and by every scheduler tick), so a listing shows
them too. Reading needs jobs:read, changing jobs:write (a schedule makes jobs); a caller
bound to a namespace sees and makes only its own schedules, whose jobs carry it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from functions.api.auth import READ, WRITE, Caller, Scope
from shared.api_schemas import ErrorResponse
from shared.core.schedule_service import ScheduleService
from shared.errors import ValidationFailed
from shared.schedule_schemas import ScheduleCreate, ScheduleOut, SchedulePage, ScheduleUpdate

router = APIRouter(prefix="/schedules", tags=["schedules"])


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in codes}


async def get_schedules(request: Request) -> ScheduleService:
    """The app's schedule service, after one successful sync of the code-declared
    schedules (a failed sync, PostgreSQL down say, is tried again on the next request)."""
    state = request.app.state
    if getattr(state, "schedules", None) is None:
        state.schedules = ScheduleService(state.service)
        state.schedules_synced = False
        state.schedules_sync_lock = asyncio.Lock()
    service: ScheduleService = state.schedules
    if not state.schedules_synced:
        async with state.schedules_sync_lock:
            if not state.schedules_synced:
                await service.sync(state.service.registry)
                state.schedules_synced = True
    return service


Schedules = Annotated[ScheduleService, Depends(get_schedules)]


def encode_cursor(name: str, schedule_id: uuid.UUID) -> str:
    raw = json.dumps([name, str(schedule_id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[str, uuid.UUID] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        name, schedule_id = json.loads(raw)
        if isinstance(name, str) and 0 < len(name) <= 200 and "\x00" not in name:
            return name, uuid.UUID(schedule_id)
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, AttributeError):
        pass
    raise ValidationFailed("cursor is not one this API returned",
                           [{"loc": ["query", "cursor"], "msg": "malformed cursor",
                             "type": "value_error"}])


def _out(schedules: ScheduleService, row: Any, runs: list[Any] | None = None
         ) -> ScheduleOut:
    """A schedule as an answer may show it: its template's payload redacted by its type
    (credentials are stored sealed and never shown), like a job's."""
    return ScheduleOut.of(schedules.jobs.registry.redacted(row), schedules.next_times(row),
                          runs)


@router.post("", status_code=201, response_model=ScheduleOut, responses=errors(409, 422),
             summary="Create a recurring schedule", dependencies=[Scope(WRITE)])
async def create_schedule(spec: ScheduleCreate, schedules: Schedules, response: Response,
                          caller: Caller) -> ScheduleOut:
    row = await schedules.create(spec, namespace=caller.namespace)
    response.headers["Location"] = (
        f"{schedules.settings.api_prefix}/schedules/{row['id']}")
    return _out(schedules, row)


@router.get("", response_model=SchedulePage, responses=errors(422),
            summary="List schedules by name (pages bounded in count and bytes)",
            dependencies=[Scope(READ)])
async def list_schedules(
    schedules: Schedules,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=200, description="Most schedules on the page; "
                                "fewer when the page reaches its byte bound.")] = 50,
    cursor: Annotated[str | None, Query(max_length=400,
                                        description="next_cursor of the previous page")] = None,
) -> Response:
    """Like the job lists, a page stops before its JSON passes ``AJS_API_PAGE_MAX_BYTES``
    (a larger schedule still comes back, alone): templates hold payloads of up to 256 KiB,
    and Lambda answers at most 6 MB."""
    rows = await schedules.page(after=decode_cursor(cursor), limit=limit + 1,
                                namespace=caller.namespace)
    more = len(rows) > limit
    budget = schedules.settings.api_page_max_bytes
    items: list[bytes] = []
    size = len(b'{"items":[],"next_cursor":""}') + 128  # the envelope and a cursor
    last = None
    for row in rows[:limit]:
        item = _out(schedules, row).model_dump_json().encode()
        if items and size + len(item) + 1 > budget:
            more = True
            break
        items.append(item)
        size += len(item) + 1
        last = row
    next_cursor = (json.dumps(encode_cursor(last["name"], last["id"])).encode()
                   if more and last is not None else b"null")
    body = b'{"items":[' + b",".join(items) + b'],"next_cursor":' + next_cursor + b"}"
    return Response(body, media_type="application/json")


@router.get("/{schedule_id}", response_model=ScheduleOut, responses=errors(404, 422),
            summary="Get a schedule, its next fire times and its last runs",
            dependencies=[Scope(READ)])
async def get_schedule(schedule_id: uuid.UUID, schedules: Schedules,
                       caller: Caller) -> ScheduleOut:
    row = await schedules.get(schedule_id, caller.namespace)
    return _out(schedules, row, await schedules.runs(schedule_id))


@router.patch("/{schedule_id}", response_model=ScheduleOut, responses=errors(404, 409, 422),
              summary="Change, pause or resume a schedule", dependencies=[Scope(WRITE)])
async def update_schedule(schedule_id: uuid.UUID, patch: ScheduleUpdate,
                          schedules: Schedules, caller: Caller) -> ScheduleOut:
    row = await schedules.update(schedule_id, patch, namespace=caller.namespace)
    return _out(schedules, row, await schedules.runs(schedule_id))


@router.delete("/{schedule_id}", status_code=204, responses=errors(404, 409, 422),
               summary="Delete a schedule (its jobs stay)", dependencies=[Scope(WRITE)])
async def delete_schedule(schedule_id: uuid.UUID, schedules: Schedules,
                          caller: Caller) -> Response:
    await schedules.delete(schedule_id, schedules.jobs.registry, caller.namespace)
    return Response(status_code=204)
