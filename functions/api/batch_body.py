"""Read a /jobs/batch body without holding the event loop for the whole parse.

A 5 MiB batch of small values takes ``json.loads`` a few hundred milliseconds, all of it in
C with the GIL held: a thread would not free the loop, so FastAPI's own parse stalled every
other request on the process for that long. Here the stdlib decoder reads one job at a
time, and the loop gets its turn every ``STEP_BYTES``. Each job is decoded by the same C
scanner ``json.loads`` uses, so the result (NaN, duplicate keys, escapes) is the same; a
body not shaped ``{"jobs": [...]}`` (keys reordered, extra keys, not JSON) is parsed whole,
which also gives the standard error position.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from shared.api_schemas import JobBatchCreate

STEP_BYTES = 128 * 1024
_OPENING = re.compile(r'[ \t\n\r]*\{[ \t\n\r]*"jobs"[ \t\n\r]*:[ \t\n\r]*\[')
_SPACE = re.compile(r"[ \t\n\r]*")
_CLOSING = re.compile(r"[ \t\n\r]*\}[ \t\n\r]*\Z")
_decoder = json.JSONDecoder()


class _NotStepwise(Exception):
    """The body is not the plain shape: parse it whole."""


async def _jobs_stepwise(text: str) -> dict[str, Any]:
    opening = _OPENING.match(text)
    if opening is None:
        raise _NotStepwise
    jobs: list[Any] = []
    pos = opening.end()
    yielded_at = pos
    pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                job, pos = _decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                raise _NotStepwise from None
            jobs.append(job)
            pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]
            if pos - yielded_at >= STEP_BYTES:
                await asyncio.sleep(0)  # let other requests run
                yielded_at = pos
            if text.startswith(",", pos):
                pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise _NotStepwise
    if _CLOSING.match(text, pos) is None:
        raise _NotStepwise
    return {"jobs": jobs}


async def parse_batch(body: bytes) -> JobBatchCreate:
    """The batch, or the refusal FastAPI's own parse would make: 400 for a body that is not
    UTF-8, else a RequestValidationError (loc from "body")."""
    if not body.strip():
        raise RequestValidationError([{"type": "missing", "loc": ("body",),
                                       "msg": "Field required", "input": None}])
    try:
        text = body.decode("utf-8")
        try:
            data = await _jobs_stepwise(text)
        except _NotStepwise:
            data = json.loads(text)
    except UnicodeDecodeError:
        # As FastAPI answers a body it cannot decode on the other routes.
        raise HTTPException(400, "There was an error parsing the body") from None
    except json.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos),
                                       "msg": "JSON decode error", "input": {},
                                       "ctx": {"error": exc.msg}}]) from None
    try:
        return JobBatchCreate.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


def request_body_schema() -> dict[str, Any]:
    """The OpenAPI requestBody of the batch route (read by hand, so declared by hand);
    JobCreate is the component POST /jobs declares."""
    schema = JobBatchCreate.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}
