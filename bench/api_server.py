"""The real job API under uvicorn, in its own process, for the HTTP enqueue figures.

The listening socket is bound here (127.0.0.1, port 0) and handed to the server process
(:mod:`bench.serve_api`) as a file descriptor, so there is no window in which another
process could take the port. Access logging is off (per-request INFO logging is off for
every peer too).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from bench.testbed import ROOT, Target
from bench.worker_process import find_below, py_spy


class ApiServer:
    def __init__(self, target: Target, log: IO[bytes], profile: str | None = None, *,
                 root: Path = ROOT, cpus: str | None = None) -> None:
        """``root``: the source tree whose API runs (another checkout of the project, to
        measure an older revision with today's load generator); ``cpus``: pin the server
        to these cores (``taskset -c``), so a load generator on the others cannot take
        its CPU."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        fd = self.sock.fileno()
        cmd = [sys.executable, "-m", "bench.serve_api", str(fd)]
        if profile:  # py-spy starts the server and samples it (see bench.hotspots)
            cmd = [*py_spy(), "record", "--nonblocking", "--rate", "250", "--format", "raw",
                   "--output", profile, "--", *cmd]
        if cpus:
            cmd = ["taskset", "-c", cpus, *cmd]
        self.proc = subprocess.Popen(
            cmd,
            cwd=root, env=target.env(PYTHONPATH=str(root)), stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(fd,), start_new_session=True)
        self.pid = (find_below(self.proc.pid, b"bench.serve_api") if profile
                    else self.proc.pid)  # taskset execs the server: the same process
        self.base_url = f"http://127.0.0.1:{self.port}"

    async def ready(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"API server exited with {self.proc.returncode}")
                try:
                    r = await client.get("/api/v1/health")
                    if r.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("API server not healthy in time")
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc.poll() is None:
            # The server itself: under py-spy it is py-spy's child, and py-spy writes its
            # file once the server has exited (a signal to py-spy would lose the file).
            os.kill(self.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.sock.close()
