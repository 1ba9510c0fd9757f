"""Pool settings that matter behind connection poolers (RDS Proxy, pgbouncer)."""

from __future__ import annotations

import asyncio

from shared.store.pool import create_pool


async def _setting_after_release(settings) -> str:
    pool = await create_pool(settings, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET statement_timeout = '4321ms'")
        async with pool.acquire() as conn:  # the same connection, released once
            return str(await conn.fetchval("SHOW statement_timeout"))
    finally:
        await pool.close()


async def test_pool_sends_no_reset_query_on_release(settings):
    # No RESET ALL round trip after each operation (and no RDS Proxy pinning): a session
    # setting survives the release, which is why our code never sets one.
    assert await _setting_after_release(settings) == "4321ms"


async def test_pool_still_rolls_back_a_transaction_left_open(settings):
    pool = await create_pool(settings, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN; CREATE TEMP TABLE left_open (x int)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('left_open')") is None
    finally:
        await pool.close()


async def test_behind_a_proxy_the_pool_caches_no_statements(settings):
    proxied = settings.model_copy(update={"db_behind_proxy": True})
    pool = await create_pool(proxied, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
            assert conn._stmt_cache.get_max_size() == 0
    finally:
        await pool.close()


async def test_a_worker_opens_its_connections_before_its_first_claim(start_worker):
    # worker_db_connections, not db_pool_max (5 in these tests): every one of them open
    # before the first claim, so no job waits for a connection being opened mid-run.
    handle = await start_worker(worker_db_connections=3, worker_concurrency=4)
    deadline = asyncio.get_running_loop().time() + 10
    while not handle.worker.ready:
        assert not handle.task.done() and asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    assert handle.worker.pool.get_max_size() == 3
    assert handle.worker.pool.get_size() == 3
