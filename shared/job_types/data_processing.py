"""data_processing: transform inline records. (Core version.)"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from shared.registry import JobContext, job_type


class DataProcessingPayload(BaseModel):
    records: list[dict[str, Any]] = []


@job_type("data_processing", DataProcessingPayload)
async def process_data(payload: DataProcessingPayload, ctx: JobContext) -> dict[str, Any]:
    """Transform a data set."""
    return {"rows_in": len(payload.records), "rows_out": len(payload.records)}
