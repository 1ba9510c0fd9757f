"""Every error the API returns has one shape: ``{"error": {"code", "message", "details"}}``.

User errors (bad input, unknown ids, conflicts) are typed in ``shared.errors`` and mapped
here; request validation errors name each bad field by its path; a store that cannot be
reached is a 503; anything unexpected is a 500 in the same shape, without internals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from shared.errors import UserError, store_unavailable_errors, unavailable_store
from shared.observability.logs import get_logger

log = get_logger("api")


def error_response(status: int, code: str, message: str,
                   details: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or []}}
    return JSONResponse(body, status_code=status, headers=headers)


def _clean(errors: Any) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        out.append({"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")),
                    "type": e.get("type")})
    return out


# Refusals that come from the middleware, not from the routes: documented here for each
# operation they can reach, so the document lists every status a client can get.
_REFUSALS = {
    "403": "A browser request from another site (Sec-Fetch-Site or Origin): refused.",
    "413": "The request body is over its size limit.",
    "415": "A request body that is not Content-Type: application/json.",
    "503": "PostgreSQL or Redis is unreachable; retry (a create with its Idempotency-Key).",
    "400": "The request body could not be decoded (not UTF-8).",
    "400-host": "The Host header is not one of AJS_API_ALLOWED_HOSTS.",
}


def _refusals_of(path: str, method: str, operation: dict[str, Any],
                 hosts_checked: bool) -> list[str]:
    codes = []
    if method in ("post", "put", "patch", "delete"):
        codes += ["403", "415"]
    if "requestBody" in operation:
        codes += ["400", "413"]
    if "/jobs" in path or "/dead-letters" in path:
        codes.append("503")
    if hosts_checked:
        codes.append("400-host")
    return codes


def edit_openapi(app: FastAPI, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``edit`` to the OpenAPI document when it is first built (FastAPI then caches
    it). Each hook wraps the previous one, so they apply in the order installed."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        edit(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _one_error_shape(schema: dict[str, Any]) -> None:
    """FastAPI documents its own 422 body (``HTTPValidationError``) on every route that takes
    parameters; ours is ``ErrorResponse``. Point the schema at the shape clients receive."""
    ours = {"$ref": "#/components/schemas/ErrorResponse"}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            invalid = operation.get("responses", {}).get("422", {})
            body = invalid.get("content", {}).get("application/json", {})
            if body.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                body["schema"] = ours
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)


METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path. Starlette's own ``Allow`` names only
    the first route that matched the path, but GET and DELETE of one path are two routes.
    Asked through ``matches`` only: FastAPI nests included routers in its own route type."""
    return [method for method in METHODS
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
                   for route in request.app.router.routes)]


def document_refusals(app: FastAPI, *, hosts_checked: bool) -> None:
    """Add the middleware's refusals to each operation they can reach. Installed after
    every other document hook, so a status someone else documents (auth's 403) keeps its
    description and gains ours."""
    def refusals(schema: dict[str, Any]) -> None:
        ours = {"$ref": "#/components/schemas/ErrorResponse"}
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                for refusal in _refusals_of(path, method, operation, hosts_checked):
                    code = refusal.split("-")[0]
                    documented = responses.setdefault(code, {
                        "description": "", "content": {"application/json": {"schema": ours}}})
                    documented["description"] = " ".join(
                        filter(None, (documented["description"], _REFUSALS[refusal])))

    edit_openapi(app, refusals)


def install(app: FastAPI) -> None:
    edit_openapi(app, _one_error_shape)

    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = _clean(exc.errors())
        where = ", ".join(".".join(str(p) for p in d["loc"]) + f": {d['msg']}"
                          for d in details[:5])
        return error_response(422, "validation_error", f"invalid request: {where}", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                 413: "payload_too_large"}
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"),
                              message, headers=headers)

    async def store_down(request: Request, exc: Exception) -> JSONResponse:
        # A store that cannot be reached is not a bug in the request or in us: 503, so
        # that clients and load balancers retry (a create safely, with its Idempotency-Key).
        store = unavailable_store(exc) or "store"
        log.warning("store unreachable", extra={"path": request.url.path, "store": store,
                                                "error": repr(exc)})
        return error_response(
            503, "unavailable", f"{store} is unreachable; retry later (a create with the "
            "same Idempotency-Key)",
            [{"loc": [store], "msg": f"{store} unavailable", "type": "dependency_failed"}],
            headers={"Retry-After": "1"})

    for unreachable in store_unavailable_errors():  # the one mapping: shared.errors
        app.add_exception_handler(unreachable, store_down)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return error_response(500, "internal_error", "internal error; the request may be "
                              "retried with the same Idempotency-Key")
