"""Alembic: upgrade head on an empty schema, downgrade base back, and up again."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg

from shared.store import migrate
from tests.conftest import DATABASE_URL


async def _tables(schema: str) -> set[str]:
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


async def test_upgrade_head_then_downgrade_base_then_upgrade_again():
    schema = "m_" + secrets.token_hex(4)
    try:
        await asyncio.to_thread(migrate.upgrade, DATABASE_URL, schema)
        assert await _tables(schema) >= {"alembic_version", "jobs", "job_transitions",
                                         "job_status_transitions", "job_counts",
                                         "job_count_deltas", "api_keys", "schedules"}
        await asyncio.to_thread(migrate.downgrade, DATABASE_URL, schema, "base")
        assert await _tables(schema) == {"alembic_version"}
        await asyncio.to_thread(migrate.upgrade, DATABASE_URL, schema)
        assert "jobs" in await _tables(schema)
    finally:
        conn = await asyncpg.connect(DATABASE_URL)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
