"""Errors a user can cause, each with the HTTP status and code the API answers with.

The API maps these in one place (functions/api/errors.py) to the single error shape
``{"error": {"code", "message", "details"}}``; library callers catch them directly.
"""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.headers: dict[str, str] = {}  # sent with the error response


class ValidationFailed(UserError):
    """Each detail names the bad field by its path: ``{"loc": [...], "msg": ...}``."""

    status = 422
    code = "validation_error"


class Unauthorized(UserError):
    """No credential, or one we do not accept (RFC 6750: a Bearer challenge)."""

    status = 401
    code = "unauthorized"
    challenge = "Bearer"

    def __init__(self, message: str) -> None:
        super().__init__(message, [{"loc": ["header", "Authorization"], "msg": message,
                                    "type": "invalid_credential"}])
        self.headers = {"WWW-Authenticate": self.challenge}


class InvalidCredential(Unauthorized):
    challenge = 'Bearer error="invalid_token"'


class Forbidden(UserError):
    """A valid credential without the scope the route needs."""

    status = 403
    code = "forbidden"

    def __init__(self, message: str, scope: str) -> None:
        super().__init__(message, [{"loc": ["header", "Authorization"],
                                    "msg": f"needs scope {scope}", "type": "insufficient_scope"}])
        self.headers = {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'}


class OtherNamespace(UserError):
    """A credential bound to a namespace asked for another one's jobs."""

    status = 403
    code = "forbidden"

    def __init__(self, mine: str, asked: str) -> None:
        super().__init__(f"this credential is bound to the namespace {mine!r}; it cannot "
                         f"read {asked!r}",
                         [{"loc": ["query", "namespace"], "msg": f"only {mine!r}",
                           "type": "other_namespace"}])


class NotFound(UserError):
    status = 404
    code = "not_found"


class Conflict(UserError):
    status = 409
    code = "conflict"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"


class PayloadTooLarge(UserError):
    status = 413
    code = "payload_too_large"


class Unavailable(UserError):
    status = 503
    code = "unavailable"



def store_unavailable_errors() -> tuple[type[Exception], ...]:
    """Every exception that means a store cannot be reached right now: the one mapping
    behind every 503 (see ``unavailable_store``).

    PostgreSQL: every connection error (class 08), the server starting up, shutting down or
    crashed (57P01-57P03), too many connections (53300), a closed pool or connection.
    Redis: every connection and timeout error (loading a dataset included), a read-only
    replica after a failover, a cluster that is down or moving slots. Then plain socket
    errors and timeouts, which name no store.
    """
    return (*_postgres_down(), *_redis_down(), OSError, TimeoutError)


def unavailable_store(exc: BaseException) -> str | None:
    """Which store ``exc`` says is unreachable ("postgres", "redis", "store"), or None."""
    if isinstance(exc, _postgres_down()):
        return "postgres"
    if isinstance(exc, _redis_down()):
        return "redis"
    if isinstance(exc, OSError | TimeoutError):
        return "store"
    return None


def _postgres_down() -> tuple[type[Exception], ...]:
    import asyncpg

    return (asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
            asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
            asyncpg.TooManyConnectionsError, asyncpg.InterfaceError)


def _redis_down() -> tuple[type[Exception], ...]:
    from redis import exceptions as e

    return (e.ConnectionError, e.TimeoutError, e.ReadOnlyError, e.ClusterDownError,
            e.TryAgainError, e.MasterDownError)
