"""report_generation: render a report to HTML (Jinja2) or CSV, upload it to S3, and return
a presigned URL to it.

Reports: ``job_activity`` (built in: what our own jobs did over a time window, by type,
read from PostgreSQL) and ``table`` (rows the caller gives, with a title).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from shared.job_types.s3uri import Destination
from shared.registry import JobContext, job_type


class ReportPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    report: Literal["job_activity", "table"] = "job_activity"
    format: Literal["html", "csv"] = "html"
    destination: Destination | None = Field(
        None, description="Where to write; default s3://AJS_REPORTS_BUCKET/reports/<job id>.")
    expires_in: int | None = Field(None, ge=1, le=604800,
                                   description="Presigned URL lifetime, seconds.")
    # job_activity: the window is [since, until); default the last `hours` until now.
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    hours: float = Field(24.0, gt=0, le=24 * 366)
    job_type: str | None = Field(None, description="Only this job type.")
    # table
    title: str = Field("Report", max_length=200)
    columns: list[str] | None = Field(None, description="Default: the first row's keys.")
    rows: list[dict[str, Any]] | None = Field(None, max_length=10_000)

    @model_validator(mode="after")
    def _fits_report(self) -> ReportPayload:
        if self.report == "table" and self.rows is None:
            raise ValueError("a table report needs rows")
        if self.since and self.until and self.since >= self.until:
            raise ValueError("since must be before until")
        return self

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        until = self.until or (self.since + timedelta(hours=self.hours) if self.since
                               else now)
        since = self.since or until - timedelta(hours=self.hours)
        return since, until


@job_type("report_generation", ReportPayload, timeout_seconds=300, concurrency_limit=2)
async def generate_report(payload: ReportPayload, ctx: JobContext) -> dict[str, Any]:
    """Render a report (job activity, or given rows) to HTML or CSV in S3; presigned URL."""
    from shared.job_types.report_generation import rendering as reports

    return await reports.run(payload, ctx)
