"""A custom job type, registered from the user's own module.

Run a worker and the API with ``AJS_JOB_MODULES=examples.text_stats`` and the type
appears in ``GET /api/v1/job-types`` and can be created like the built-in ones::

    curl -X POST http://localhost:8000/api/v1/jobs -H 'content-type: application/json' \\
      -d '{"job_type": "text_stats", "payload": {"text": "to be or not to be", "top": 2}}'

The tests load this module the same way (tests/test_registry.py).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from pydantic import BaseModel, Field

from shared.registry import Backoff, JobContext, PermanentError, job_type


class TextStats(BaseModel):
    text: str = Field(max_length=100_000)
    top: int = Field(3, ge=1, le=100, description="How many of the commonest words.")


@job_type(
    "text_stats",
    TextStats,
    priority=7,  # background work: after the default 5
    timeout_seconds=30,
    max_retries=2,
    backoff=Backoff(base=1.0, factor=2.0),
    rate_limit=(100, 1.0),  # 100 starts per second across all workers
    concurrency_limit=4,  # 4 at once across all workers
)
async def text_stats(payload: TextStats, ctx: JobContext) -> dict[str, Any]:
    """Count the words of a text and name the commonest ones."""
    words = re.findall(r"[\w']+", payload.text.lower())
    if not words:
        # Retrying cannot help: straight to the dead letter queue.
        raise PermanentError("the text has no words")
    ctx.logger.info("counted", extra={"words": len(words)})
    return {"words": len(words), "distinct": len(set(words)),
            "top": Counter(words).most_common(payload.top)}
