"""What the routes share: the per-app service, reached through FastAPI dependencies."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, Query, Request
from starlette.convertors import Convertor, register_url_convertor

from shared.api_schemas import NAME_PATTERN
from shared.core.service import JobService
from shared.errors import ValidationFailed


async def get_service(request: Request) -> JobService:
    # async: a plain def dependency would run in the thread pool on every request
    service: JobService = request.app.state.service
    return service


Service = Annotated[JobService, Depends(get_service)]

JobTypeFilter = Annotated[str | None, Query(max_length=100, pattern=NAME_PATTERN,
                                            description="Only jobs of this type.")]


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        # seq is a bigint: a larger number is no cursor of ours (and asyncpg cannot send it).
        if raw.startswith("s") and raw[1:].isdigit() and 0 < (seq := int(raw[1:])) < 2**63:
            return seq
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise ValidationFailed("cursor is not one this API returned",
                           [{"loc": ["query", "cursor"], "msg": "malformed cursor",
                             "type": "value_error"}])


class JobIdConvertor(Convertor[str]):
    """``{job_id:job_id}``: any one segment except the fixed names beside it under /jobs.

    Without it ``GET /jobs/batch`` is a request for the job called "batch" (a 422 for its
    id) instead of a 405 for the wrong method on /jobs/batch. The id itself is still
    checked as a UUID by the route, so a malformed one stays a 422 naming it.
    """

    regex = r"(?!(?:activity|batch|stats)$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("job_id", JobIdConvertor())
