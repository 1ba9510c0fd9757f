"""Lambda entry point: the FastAPI app behind Mangum (API Gateway HTTP API events).

Built once per container at import; Mangum keeps one event loop for the container, so the
connections opened by the first invocation serve the warm ones (one PostgreSQL
connection per container with ``AJS_DB_POOL_MAX=1``).
"""

from __future__ import annotations

from mangum import Mangum

from functions.api.app import create_app

app = create_app(close_on_shutdown=False)
handler = Mangum(app, lifespan="off")
