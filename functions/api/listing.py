"""List pages bounded by count and by bytes, for /jobs and /dead-letters.

A page holds at most ``limit`` jobs and stops before its JSON would pass
``api_page_max_bytes`` (a job larger than that still comes back, alone); ``next_cursor``
continues either way. ``fields=summary`` leaves payload and result out. Lambda answers
at most 6 MB, and 500 jobs of 256 KiB would be a 128 MB answer.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import Query
from fastapi.responses import Response

from functions.api.deps import decode_cursor, encode_cursor
from shared.api_schemas import JobOut, JobSummary
from shared.core.service import JobService
from shared.core.status import Status


class Fields(StrEnum):
    full = "full"
    summary = "summary"


FieldsQuery = Annotated[Fields, Query(
    description="`summary` leaves each job's payload and result out of the page.")]
Limit = Annotated[int, Query(ge=1, le=500, description="Most jobs on the page; fewer when "
                                                        "the page reaches its byte bound.")]
Cursor = Annotated[str | None, Query(max_length=64,
                                     description="next_cursor of the previous page")]


async def page(service: JobService, *, status: Status | None, job_type: str | None,
               limit: int, cursor: str | None, fields: Fields,
               namespace: str | None) -> Response:
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
                                       namespace=namespace)
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
