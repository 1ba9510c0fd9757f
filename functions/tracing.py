"""X-Ray tracing of the Lambda handlers with powertools' Tracer, where tracing is on.

Where it is off (outside Lambda, under SAM local, or with POWERTOOLS_TRACE_DISABLED=true:
powertools' own rules) no Tracer is built at all: building one imports the X-Ray SDK and
botocore even when disabled, about a second and 20 MB of every cold start, and of every
local process that imports a handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools.tracing.tracer import Tracer

Handler = TypeVar("Handler", bound=Callable[..., Any])
# What the functions call out through: AWS (Secrets Manager, SSM) and plain HTTP (the
# Pushgateway). Patching everything X-Ray knows would import libraries we never use
# (SQLAlchemy, requests, ...) into every cold start; asyncpg and redis have no patcher.
PATCH = ("botocore", "httplib")


def lambda_tracer(service: str) -> Tracer | None:
    """The function's Tracer, or None where tracing is off."""
    if Tracer._is_tracer_disabled():  # the rules Tracer() itself applies
        return None
    return Tracer(service=service, patch_modules=PATCH)


def traced(tracer: Tracer | None) -> Callable[[Handler], Handler]:
    """Decorate a handler: a traced segment per invocation (the response is not recorded:
    it carries job payloads)."""
    if tracer is None:
        return lambda handler: handler
    decorate: Callable[[Handler], Handler] = tracer.capture_lambda_handler(
        capture_response=False)
    return decorate
