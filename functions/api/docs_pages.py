"""Swagger UI and ReDoc, served with their scripts and styles from the API itself.

FastAPI's default pages load them from a public CDN, so in a VPC without internet (or any
browser that cannot reach jsdelivr) both pages are blank. The assets come from the
``fastapi-offline`` package, which ships them as package data, so they travel with the
dependencies into the Lambda artifact and are never copied into this repository.

Every URL the pages use is relative to the page itself (``openapi.json``,
``docs-assets/...``): the browser resolves it against whatever address it opened, so the
pages keep working behind API Gateway's stage prefix, a custom domain's base path or a
proxy's ``root_path``, none of which the app can reliably see (Mangum always reports an
empty ``root_path``). That needs the pages, the schema and the assets in one directory,
which they are: all three live directly under ``api_prefix``.

The pages and the schema describe the API's shape only and reveal no data, so they are
meant to stay readable without an API key.
"""

from __future__ import annotations

from importlib.metadata import version
from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from functions.api.auth import Public
from shared.errors import NotFound

_STATIC = files("fastapi_offline").joinpath("static")
ASSET_DIR = "docs-assets"
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"
# Only the files the pages use, each by a fixed name: one route over this set rather than a
# static mount, so that no path a client makes up reaches the file system or becomes a
# metrics label (the route label is ``{prefix}/docs-assets/{name}``).
ASSETS = {name: str(_STATIC.joinpath(name))
          for name in (SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON)}
# The package's version in the asset URLs makes a long cache safe: an upgrade changes them.
_VERSION = version("fastapi-offline")
CACHE_CONTROL = "public, max-age=86400"


def _asset(name: str) -> str:
    return f"{ASSET_DIR}/{name}?v={_VERSION}"


def install(app: FastAPI, prefix: str, openapi_name: str = "openapi.json") -> None:
    """Serve ``{prefix}/docs`` (Swagger UI), ``{prefix}/redoc`` and their assets.

    ``app`` must be created with ``docs_url=None, redoc_url=None`` and its OpenAPI schema
    at ``{prefix}/{openapi_name}``.
    """

    @app.get(f"{prefix}/{ASSET_DIR}/{{name}}", include_in_schema=False, dependencies=[Public()])
    async def docs_asset(name: str) -> FileResponse:
        path = ASSETS.get(name)
        if path is None:
            raise NotFound("no such documentation asset; there are: " + ", ".join(ASSETS))
        return FileResponse(path, headers={"Cache-Control": CACHE_CONTROL})

    @app.get(f"{prefix}/docs", include_in_schema=False, dependencies=[Public()])
    async def swagger_ui() -> HTMLResponse:
        # No oauth2_redirect_url: the API takes API keys, not an OAuth2 flow, and Swagger
        # UI would build that URL from the origin, losing any stage prefix.
        return get_swagger_ui_html(
            openapi_url=openapi_name,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=_asset(SWAGGER_JS),
            swagger_css_url=_asset(SWAGGER_CSS),
            swagger_favicon_url=_asset(FAVICON),
            oauth2_redirect_url=None,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(f"{prefix}/redoc", include_in_schema=False, dependencies=[Public()])
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_name,
            title=f"{app.title} - ReDoc",
            redoc_js_url=_asset(REDOC_JS),
            redoc_favicon_url=_asset(FAVICON),
            with_google_fonts=False,  # fonts.googleapis.com is as unreachable as the CDN
        )
