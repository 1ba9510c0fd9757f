"""``s3://bucket/key`` URIs as a payload field type.

Payload models use :data:`S3Uri` so that the API refuses a malformed location with a
422 naming the field, before a worker ever tries to reach S3. Cheap to import: the API
loads it with the models and never needs boto3.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, ValidationInfo

if TYPE_CHECKING:
    from shared.settings import Settings

# Bucket names per the S3 naming rules (3-63 chars, lowercase, digits, dots, hyphens).
_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/(.+)$")


def split(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b.csv`` -> ``("bucket", "a/b.csv")``."""
    match = _URI.match(uri)
    if match is None:
        raise ValueError("must be an s3://bucket/key URI")
    return match.group(1), match.group(2)


def _check_object(uri: str) -> str:
    _, key = split(uri)
    if key.endswith("/"):
        raise ValueError("must name an object, not a prefix ending in '/'")
    return uri


S3Uri = Annotated[str, AfterValidator(_check_object)]
"""An ``s3://bucket/key`` URI naming one object."""

_PREFIX = re.compile(r"^s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/?(.*)$")


def split_prefix(entry: str) -> tuple[str, str]:
    """``s3://bucket/reports/`` -> ``("bucket", "reports/")``; a bare bucket allows all of it."""
    match = _PREFIX.match(entry)
    if match is None:
        raise ValueError(f"{entry!r} is not an s3://bucket/prefix location")
    return match.group(1), match.group(2)


def write_prefixes(settings: Settings) -> list[str]:
    """Where jobs may write: the operator's list, else the reports bucket alone (the worker's
    role may reach other buckets, and a payload must not be able to overwrite them)."""
    if settings.s3_write_prefixes:
        return list(settings.s3_write_prefixes)
    return [f"s3://{settings.reports_bucket}/"] if settings.reports_bucket else []


def writable(uri: str, settings: Settings) -> bool:
    bucket, key = split(uri)
    for entry in write_prefixes(settings):
        if entry == "*":
            return True
        allowed_bucket, prefix = split_prefix(entry)
        # A prefix matches whole path segments when it ends in '/', else as text: an
        # operator who writes s3://b/out/ does not allow s3://b/outside.
        if bucket == allowed_bucket and key.startswith(prefix):
            return True
    return False


def refusal(uri: str, settings: Settings) -> str:
    allowed = ", ".join(write_prefixes(settings)) or "nowhere"
    return (f"{uri} is outside the locations jobs may write to ({allowed}); "
            "see AJS_S3_WRITE_PREFIXES")


def _check_destination(uri: str, info: ValidationInfo) -> str:
    """At create time (the API passes its settings as context) and only when the operator
    listed locations: without the list the API may not know the reports bucket, and the
    worker checks every write anyway."""
    context: Any = info.context
    settings = context.get("settings") if isinstance(context, dict) else None
    if settings is not None and settings.s3_write_prefixes and not writable(uri, settings):
        raise ValueError(refusal(uri, settings))
    return uri


Destination = Annotated[str, AfterValidator(_check_object), AfterValidator(_check_destination)]
"""An ``s3://bucket/key`` URI a job writes to: within ``AJS_S3_WRITE_PREFIXES``."""
