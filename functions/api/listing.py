"""List pages bounded by count and by bytes, for /jobs and /dead-letters.

A page holds at most ``limit`` jobs and stops before its JSON would pass
``api_page_max_bytes`` (a job larger than that still comes back, alone); ``next_cursor``
continues either way. ``fields=summary`` leaves payload and result out. Lambda answers
at most 6 MB, and 500 jobs of 256 KiB would be a 128 MB answer.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from fastapi import Query
from fastapi.responses import Response
from pydantic import BeforeValidator

from functions.api.deps import decode_cursor, encode_cursor
from shared.api_schemas import JobOut, JobSummary
from shared.core.service import JobService
from shared.core.status import Status
from shared.errors import ValidationFailed
from shared.store.jobs import ListFilter


class Fields(StrEnum):
    full = "full"
    summary = "summary"


FieldsQuery = Annotated[Fields, Query(
    description="`summary` leaves each job's payload and result out of the page.")]
Limit = Annotated[int, Query(ge=1, le=500, description="Most jobs on the page; fewer when "
                                                        "the page reaches its byte bound.")]
Cursor = Annotated[str | None, Query(max_length=64,
                                     description="next_cursor of the previous page")]


IdSearch = Annotated[str | None, Query(
    alias="id", min_length=4, max_length=36, pattern=r"^[0-9a-fA-F-]+$",
    description="A job id, or the first hex digits of one (at least 4; hyphens ignored).")]


def _iso_only(value: object) -> object:
    """A moment written as ISO-8601, never a number pydantic would read as seconds since
    the epoch (``created_after=3.5e-176`` is a mistake, not 1970)."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("an ISO-8601 date-time, not a number")
    return value


CreatedAfter = Annotated[datetime | None, BeforeValidator(_iso_only), Query(
    description="Only jobs created at or after this moment (ISO-8601; without an offset: "
    "UTC).")]
CreatedBefore = Annotated[datetime | None, BeforeValidator(_iso_only), Query(
    description="Only jobs created before this moment (ISO-8601; without an offset: UTC).")]

# The moments a time filter may name: any job's creation lies between.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
_HEX = re.compile(r"^[0-9a-f]{4,32}$")


def id_range(search: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The ids a search covers: one id, or every id starting with the hex prefix. A range
    on the primary key (uuids compare as their bytes, in hex order), not a LIKE on a cast."""
    digits = search.replace("-", "").lower()
    if not _HEX.match(digits):
        raise ValidationFailed(
            "id: give a job id or at least 4 of its first hex digits",
            [{"loc": ["query", "id"], "msg": "4 to 32 hex digits (hyphens ignored)",
              "type": "value_error"}])
    pad = 32 - len(digits)
    return uuid.UUID(digits + "0" * pad), uuid.UUID(digits + "f" * pad)


def _moment(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if not EARLIEST <= value <= LATEST:
        raise ValidationFailed(
            f"{name}: between {EARLIEST.date()} and {LATEST.date()}",
            [{"loc": ["query", name], "msg": f"between {EARLIEST.isoformat()} and "
              f"{LATEST.isoformat()}", "type": "value_error"}])
    return value


def narrowing(created_after: datetime | None, created_before: datetime | None,
              id_search: str | None) -> ListFilter | None:
    """The list's extra filters, checked (bad input: 422 naming the parameter)."""
    after = _moment(created_after, "created_after")
    before = _moment(created_before, "created_before")
    if after is not None and before is not None and after >= before:
        raise ValidationFailed(
            "created_after must be earlier than created_before",
            [{"loc": ["query", "created_after"], "msg": "not earlier than created_before",
              "type": "value_error"}])
    ids = id_range(id_search) if id_search is not None else None
    if after is None and before is None and ids is None:
        return None
    return ListFilter(created_after=after, created_before=before, id_between=ids)


async def page(service: JobService, *, status: Status | None, job_type: str | None,
               limit: int, cursor: str | None, fields: Fields,
               namespace: str | None, narrow: ListFilter | None = None) -> Response:
    """The page as JSON bytes: encoded once, item by item (each payload as its type redacts
    it), never as one big dict."""
    budget = service.settings.api_page_max_bytes
    summary = fields is Fields.summary
    store = await service.stores.store()
    # PostgreSQL bounds what is fetched by payload and result size; the other columns are
    # counted here, where each item is encoded exactly as it is sent.
    rows, more = await store.list_page(status=status, job_type=job_type,
                                       before_seq=decode_cursor(cursor), limit=limit,
                                       max_bytes=budget, summary=summary,
                                       namespace=namespace, narrow=narrow)
    model = JobSummary if summary else JobOut
    items: list[bytes] = []
    size = len(b'{"items":[],"next_cursor":""}') + 32  # the envelope and a cursor
    last_seq = None
    for i, row in enumerate(rows):
        item = model.of(service.registry.redacted(row)).model_dump_json().encode()
        if items and size + len(item) + 1 > budget:
            more = True
            break
        items.append(item)
        size += len(item) + 1
        last_seq = rows[i]["seq"]
    next_cursor = (b'"' + encode_cursor(last_seq).encode() + b'"'
                   if more and last_seq is not None else b"null")
    body = b'{"items":[' + b",".join(items) + b'],"next_cursor":' + next_cursor + b"}"
    return Response(body, media_type="application/json")
