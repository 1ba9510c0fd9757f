"""The access vocabulary: scopes, what each implies, and what a namespace may be called.

Three scopes, each a superset of the one below it, because every use we know of needs
the lower ones too: ``jobs:write`` creates and cancels jobs, and a caller that creates a
job must be able to read it back (its status, its result); ``admin`` steers the dead
letter queue (redrive, purge), which only makes sense to a caller that can see the jobs.
(API keys themselves are managed with ``python -m functions.api.keys``, which needs the
database, not a scope.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

READ = "jobs:read"
WRITE = "jobs:write"
ADMIN = "admin"
ScopeName = Literal["jobs:read", "jobs:write", "admin"]
SCOPES: tuple[str, ...] = (READ, WRITE, ADMIN)
IMPLIES: dict[str, frozenset[str]] = {
    READ: frozenset({READ}),
    WRITE: frozenset({WRITE, READ}),
    ADMIN: frozenset({ADMIN, WRITE, READ}),
}

# Lower-case letters, digits, '.', '_' and '-': safe in logs, URLs and Redis keys alike.
NAMESPACE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"


def expand(granted: Iterable[str]) -> frozenset[str]:
    """Every scope that the granted ones carry; names we do not know are dropped."""
    out: set[str] = set()
    for scope in granted:
        out |= IMPLIES.get(scope, frozenset())
    return frozenset(out)
