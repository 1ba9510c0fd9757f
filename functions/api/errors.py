"""Every error the API returns has one shape: ``{"error": {"code", "message", "details"}}``.

User errors (bad input, unknown ids, conflicts) are typed in ``shared.errors`` and mapped
here; request validation errors name each bad field by its path; anything unexpected is a
500 in the same shape, without internals.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import UserError
from shared.logs import get_logger

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


def install(app: FastAPI) -> None:
    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = _clean(exc.errors())
        where = ", ".join(".".join(str(p) for p in d["loc"]) + f": {d['msg']}"
                          for d in details[:5])
        return error_response(422, "validation_error", f"invalid request: {where}", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"),
                              message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return error_response(500, "internal_error", "internal error; the request may be "
                              "retried with the same Idempotency-Key")
