"""Pool settings that matter behind connection poolers (RDS Proxy, pgbouncer)."""

from __future__ import annotations

from shared.db import create_pool


async def _setting_after_release(settings) -> str:
    pool = await create_pool(settings, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET statement_timeout = '4321ms'")
        async with pool.acquire() as conn:  # the same connection, released once
            return str(await conn.fetchval("SHOW statement_timeout"))
    finally:
        await pool.close()


async def test_pool_resets_sessions_by_default(settings):
    assert await _setting_after_release(settings) != "4321ms"


async def test_behind_a_proxy_the_pool_sends_no_reset_and_caches_no_statements(settings):
    proxied = settings.model_copy(update={"db_behind_proxy": True})
    assert await _setting_after_release(proxied) == "4321ms"  # no RESET ALL was sent
    pool = await create_pool(proxied, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
            assert conn._stmt_cache.get_max_size() == 0
    finally:
        await pool.close()
