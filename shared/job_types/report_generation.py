"""report_generation: render a report. (Core version.)"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from shared.registry import JobContext, job_type


class ReportPayload(BaseModel):
    report: str = "job_activity"


@job_type("report_generation", ReportPayload)
async def generate_report(payload: ReportPayload, ctx: JobContext) -> dict[str, Any]:
    """Render a report."""
    return {"report": payload.report}
