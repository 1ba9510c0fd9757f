"""Lambda entry point of the scheduler function (EventBridge ``Scheduled Event``).

The event is parsed with powertools' EventBridge model, so anything that is not an
EventBridge event is refused loudly instead of silently ticking. One event loop lives for
the container's lifetime, so the pool and Redis client opened by the first invocation
serve the warm ones.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.scheduler.tick import tick
from functions.tracing import lambda_tracer, traced
from shared.connections import Stores
from shared.observability.logs import lambda_logger
from shared.registry import load
from shared.secret_settings import resolve_secrets
from shared.settings import get_settings


class ScheduledEvent(EventBridgeModel):
    """EventBridge's envelope; ``version`` is optional because the event that
    ``sam local generate-event cloudwatch scheduled-event`` prints has none."""

    version: str = "0"


logger = lambda_logger("scheduler")  # powertools: injects the Lambda context
tracer = lambda_tracer("scheduler")  # off outside Lambda / POWERTOOLS_TRACE_DISABLED
_loop = asyncio.new_event_loop()
_stores: Stores | None = None


def _get_stores() -> Stores:
    global _stores
    if _stores is None:
        settings = resolve_secrets(get_settings())
        _stores = Stores(settings)
    return _stores


@logger.inject_lambda_context(log_event=False)
@traced(tracer)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    scheduled = parse(event=event, model=ScheduledEvent)
    stores = _get_stores()
    registry = load(stores.settings.job_modules)
    summary = _loop.run_until_complete(tick(stores, registry))
    summary["event_id"] = scheduled.id
    summary["event_time"] = scheduled.time.isoformat()
    logger.info("scheduler tick", extra=summary)
    return summary
