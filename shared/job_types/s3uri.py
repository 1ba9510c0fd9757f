"""``s3://bucket/key`` URIs as a payload field type.

Payload models use :data:`S3Uri` so that the API refuses a malformed location with a
422 naming the field, before a worker ever tries to reach S3. Cheap to import: the API
loads it with the models and never needs boto3.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

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
