"""/schedules: recurring schedules, made through the API or declared in code.

The schedules declared in code (``AJS_JOB_MODULES``) are synced into the table before this
app first serves a schedules request (and by every scheduler tick), so a listing shows
them too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from shared.api_schemas import ErrorResponse
from shared.core.schedule_service import ScheduleService
from shared.errors import ValidationFailed
from shared.registry import Registry
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


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.service.registry
    return registry


def encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(f"n{name}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if raw.startswith("n") and 1 < len(raw) <= 201 and "\x00" not in raw:
            return raw[1:]
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise ValidationFailed("cursor is not one this API returned",
                           [{"loc": ["query", "cursor"], "msg": "malformed cursor",
                             "type": "value_error"}])


@router.post("", status_code=201, response_model=ScheduleOut, responses=errors(409, 422),
             summary="Create a recurring schedule")
async def create_schedule(spec: ScheduleCreate, schedules: Schedules,
                          response: Response) -> ScheduleOut:
    row = await schedules.create(spec)
    response.headers["Location"] = (
        f"{schedules.settings.api_prefix}/schedules/{row['id']}")
    return ScheduleOut.of(row, schedules.next_times(row))


@router.get("", response_model=SchedulePage, summary="List schedules by name")
async def list_schedules(
    schedules: Schedules,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=400,
                                        description="next_cursor of the previous page")] = None,
) -> SchedulePage:
    rows = await schedules.page(after_name=decode_cursor(cursor), limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return SchedulePage(items=[ScheduleOut.of(r, schedules.next_times(r)) for r in rows],
                        next_cursor=encode_cursor(rows[-1]["name"]) if more else None)


@router.get("/{schedule_id}", response_model=ScheduleOut, responses=errors(404, 422),
            summary="Get a schedule, its next fire times and its last runs")
async def get_schedule(schedule_id: uuid.UUID, schedules: Schedules) -> ScheduleOut:
    row = await schedules.get(schedule_id)
    return ScheduleOut.of(row, schedules.next_times(row), await schedules.runs(schedule_id))


@router.patch("/{schedule_id}", response_model=ScheduleOut, responses=errors(404, 409, 422),
              summary="Change, pause or resume a schedule")
async def update_schedule(schedule_id: uuid.UUID, patch: ScheduleUpdate,
                          schedules: Schedules) -> ScheduleOut:
    row = await schedules.update(schedule_id, patch)
    return ScheduleOut.of(row, schedules.next_times(row), await schedules.runs(schedule_id))


@router.delete("/{schedule_id}", status_code=204, responses=errors(404, 409, 422),
               summary="Delete a schedule (its jobs stay)")
async def delete_schedule(schedule_id: uuid.UUID, schedules: Schedules,
                          request: Request) -> Response:
    await schedules.delete(schedule_id, _registry(request))
    return Response(status_code=204)
