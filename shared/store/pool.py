"""asyncpg pool creation: JSON codecs, schema search path, and Lambda-friendly sizing."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from shared.settings import Settings

# Built once: ``json.dumps`` with any argument builds a new encoder per call, which cost
# a single create 4 us of its ~300 us of CPU (bench/RESULTS.md, "Issue 12").
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects; compact separators keep payload bytes honest.
    for name in ("jsonb", "json"):
        await conn.set_type_codec(
            name,
            encoder=_COMPACT_JSON.encode,
            decoder=json.loads,
            schema="pg_catalog",
        )


class NoResetConnection(asyncpg.Connection):
    """A connection that sends no reset query when it goes back to the pool.

    asyncpg's default runs ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release: one more round trip for each pool operation, and behind
    RDS Proxy it pins the connection (asyncpg issue 1153). Our code sets no session
    state, holds no session advisory locks and never LISTENs, so there is nothing to
    reset; an open transaction is still rolled back by asyncpg on release.
    """

    def get_reset_query(self) -> str:
        return ""


async def create_pool(settings: Settings, **overrides: Any) -> asyncpg.Pool:
    """A pool bound to the running event loop.

    Mangum keeps one loop per Lambda container, so a pool made lazily on first use lives
    across warm invocations; ``db_pool_max=1`` there keeps one connection per container.
    """
    options: dict[str, Any] = {
        "min_size": min(settings.db_pool_min, settings.db_pool_max),
        "max_size": settings.db_pool_max,
        "timeout": settings.db_connect_timeout,
        "statement_cache_size": settings.db_statement_cache_size,
        "server_settings": {
            "search_path": settings.db_schema,
            "application_name": "async-job-scheduler",
        },
        "init": _init_connection,
        "connection_class": NoResetConnection,
    }
    if settings.db_behind_proxy:
        options["statement_cache_size"] = 0
    options.update(overrides)
    pool = await asyncpg.create_pool(settings.database_url, **options)
    assert pool is not None
    return pool
