"""Alembic environment: raw SQL migrations run over asyncpg, inside one schema.

The schema comes from settings (``AJS_DB_SCHEMA``) so that every test can own a schema and
production can keep the tables out of ``public``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from shared.settings import get_settings


def _sqlalchemy_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"postgresql+asyncpg://{rest}" if scheme in ("postgres", "postgresql") else url


def _run(connection: Connection, schema: str) -> None:
    context.configure(
        connection=connection,
        version_table_schema=schema,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    settings = get_settings()
    url = context.config.attributes.get("database_url") or settings.database_url
    schema = context.config.attributes.get("schema") or settings.db_schema
    engine = create_async_engine(_sqlalchemy_url(url), connect_args={"server_settings": {
        "search_path": schema}})
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            await conn.commit()
            await conn.run_sync(_run, schema)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline SQL generation is not supported: run against a database")
asyncio.run(_main())
