"""The README's first command: the whole system on one machine, the seed's example
through it, and Ctrl-C stopping everything (here with throwaway PostgreSQL and Redis, the
path a fresh machine takes)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx
import psutil

from tests.conftest import ROOT
from tests.support.servers import free_port
from tests.support.waits import eventually

SEED_EXAMPLE = {"job_type": "email", "payload": {
    "to": "user@example.com", "subject": "Test Email",
    "body": "This is a test email from the job scheduler"}, "priority": 5}


async def test_local_stack_runs_the_seed_example_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AJS_") and k not in ("DATABASE_URL", "REDIS_URL")}
    log = tmp_path / "stack.log"
    with open(log, "wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "scripts.local_stack", "--throwaway", "--port", str(port),
            "--tick", "1", "--key-file", str(tmp_path / "key"), cwd=str(ROOT), env=env,
            stdout=out, stderr=out)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def healthy():
                try:
                    return (await client.get("/api/v1/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(healthy, timeout=120, interval=0.25, what="the API")
            # As the README says: without the key, 401; with the printed key, the seed job.
            assert (await client.post("/api/v1/jobs", json=SEED_EXAMPLE)).status_code == 401
            key = (tmp_path / "key").read_text().strip()

            async def printed():
                return f"export AJS_KEY={key}" in log.read_text()

            await eventually(printed, timeout=30, what="the key printed for the README")
            client.headers["Authorization"] = f"Bearer {key}"
            created = await client.post("/api/v1/jobs", json=SEED_EXAMPLE)
            assert created.status_code == 201, created.text
            job_id = created.json()["id"]

            async def completed():
                body = (await client.get(f"/api/v1/jobs/{job_id}")).json()
                return body if body["status"] == "COMPLETED" else None

            job = await eventually(completed, timeout=60, what="the seed email job")
            assert job["result"]["recipients"] == 1
            listed = (await client.get("/api/v1/jobs/")).json()["items"]
            assert job_id in [item["id"] for item in listed]
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # api, worker, scheduler (and the stand-in servers)
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        for child in children:
            assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = log.read_text()
    assert "started a throwaway PostgreSQL" in text and "started a throwaway Redis" in text
