"""Rendering reports: gather the data, render HTML (Jinja2) or CSV, upload to S3, presign.

Templates live in ``templates/`` beside this module and are autoescaped: a table report
shows caller-given text, which must never become markup in the reader's browser.
"""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, select_autoescape

from shared.job_types import aws
from shared.job_types.report_generation import job_activity
from shared.registry import JobContext, PermanentError

if TYPE_CHECKING:
    from shared.job_types.report_generation import ReportPayload

CONTENT_TYPE = {"html": "text/html; charset=utf-8", "csv": "text/csv; charset=utf-8"}

_env = Environment(loader=PackageLoader("shared.job_types.report_generation", "templates"),
                   autoescape=select_autoescape(["html", "j2"]), trim_blocks=True,
                   lstrip_blocks=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


_env.filters["fmt"] = _fmt


async def run(payload: ReportPayload, ctx: JobContext) -> dict[str, Any]:
    s = ctx.settings
    destination = payload.destination
    if destination is None:
        if not s.reports_bucket:
            raise PermanentError("no destination given and AJS_REPORTS_BUCKET is not set")
        destination = f"s3://{s.reports_bucket}/reports/{ctx.job_id}.{payload.format}"
    aws.ensure_writable(destination, s)
    now = datetime.now(UTC)
    if payload.report == "job_activity":
        since, until = payload.window(now)
        activity = await job_activity.gather(ctx.db, since, until, payload.job_type)
        title = f"Job activity {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC"
        columns, rows = job_activity.COLUMNS, activity.rows
        context: dict[str, Any] = {"activity": activity}
        template = "job_activity.html.j2"
    else:
        rows = payload.rows or []
        columns = payload.columns or (list(rows[0]) if rows else [])
        title, context, template = payload.title, {}, "table.html.j2"
    if payload.format == "csv":
        data = to_csv(columns, rows)
    else:
        data = _env.get_template(template).render(
            title=title, columns=columns, rows=rows, generated_at=now, **context).encode()
    expires = payload.expires_in or s.report_url_seconds
    url = await asyncio.to_thread(_upload, ctx, data, destination, payload.format, expires)
    return {"report": payload.report, "format": payload.format, "uri": destination,
            "url": url, "expires_at": (now + timedelta(seconds=expires)).isoformat(),
            "bytes": len(data), "rows": len(rows)}


def to_csv(columns: list[str], rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def _upload(ctx: JobContext, data: bytes, uri: str, fmt: str, expires: int) -> str:
    clients = aws.clients(ctx.resources, ctx.settings)
    clients.upload(io.BytesIO(data), uri, CONTENT_TYPE[fmt])
    return clients.presign(uri, expires)
