"""The console's shell pages and their assets: public, static, and without data.

Every URL a page uses is relative to the page (``root`` is the way from the page to the
console's own directory), so the console keeps working behind API Gateway's stage
prefix or a custom domain's base path, which the app cannot see (see docs_pages).
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from functions.api.auth import Public
from functions.api.console.rendering import ASSET_VERSION, ASSETS, HEADERS, render
from shared.core.status import Status
from shared.errors import NotFound

router = APIRouter(prefix="/console", include_in_schema=False, dependencies=[Public()])

# One route over a fixed set of names rather than a static mount: no path a client makes
# up reaches the file system or becomes a metrics label.
ASSET_FILES = {"console.css": "text/css", "console.js": "text/javascript"}
CACHE_CONTROL = "public, max-age=86400, immutable"  # the URLs carry ASSET_VERSION

NAV = [("overview", "Overview", "../console"), ("jobs", "Jobs", "jobs"),
       ("dead-letters", "Dead letters", "dead-letters"), ("schedules", "Schedules", "schedules")]


def _shell(page: str, title: str, root: str, **context: Any) -> HTMLResponse:
    response = render(f"{page}.html", page=page, title=title, root=root, nav=NAV,
                      version=ASSET_VERSION, **context)
    # The shell never changes with the caller, but its asset URLs do with a release.
    response.headers["Cache-Control"] = "no-cache"
    return response


@router.get("")
async def overview() -> HTMLResponse:
    # {prefix}/console sits beside the console's directory, not in it.
    return _shell("overview", "Overview", "console/")


@router.get("/sign-in")
async def sign_in() -> HTMLResponse:
    return _shell("sign-in", "Sign in", "./")


@router.get("/jobs")
async def jobs(request: Request) -> HTMLResponse:
    # The filter form is filled from the query the browser sent: the user's own input
    # echoed back (escaped), not data from the store.
    query = request.query_params
    return _shell("jobs", "Jobs", "./", statuses=[s.value for s in Status],
                  filters={name: query.get(name, "") for name in (
                      "status", "job_type", "namespace", "created_after", "created_before",
                      "id")})


@router.get("/jobs/{job_id}")
async def job(job_id: uuid.UUID) -> HTMLResponse:
    return _shell("job", f"Job {job_id}", "../", job_id=str(job_id))


@router.get("/dead-letters")
async def dead_letters() -> HTMLResponse:
    return _shell("dead-letters", "Dead letters", "./")


@router.get("/schedules")
async def schedules() -> HTMLResponse:
    return _shell("schedules", "Schedules", "./")


@router.get("/assets/{name}")
async def asset(name: str) -> FileResponse:
    media_type = ASSET_FILES.get(name)
    if media_type is None:
        raise NotFound("no such console asset; there are: " + ", ".join(ASSET_FILES))
    return FileResponse(ASSETS / name, media_type=media_type,
                        headers={**HEADERS, "Cache-Control": CACHE_CONTROL})
