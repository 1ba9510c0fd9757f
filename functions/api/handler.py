"""Lambda entry point: the FastAPI app behind Mangum (API Gateway HTTP API events).

Built once per container at import; Mangum keeps one event loop for the container, so the
connections opened by the first invocation serve the warm ones (one PostgreSQL
connection per container with ``AJS_DB_POOL_MAX=1``).
"""

from __future__ import annotations

import gc
from typing import Any

from mangum import Mangum

from functions.api.app import create_app
from functions.tracing import lambda_tracer, traced
from shared.secret_settings import resolve_secrets
from shared.settings import get_settings

# X-Ray tracing; off outside Lambda and wherever POWERTOOLS_TRACE_DISABLED=true.
tracer = lambda_tracer("api")
app = create_app(resolve_secrets(get_settings()), close_on_shutdown=False)
asgi = Mangum(app, lifespan="off")
gc.freeze()  # what the container keeps for good stays out of full collections (app.serve)


@traced(tracer)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    response: dict[str, Any] = asgi(event, context)
    return response
