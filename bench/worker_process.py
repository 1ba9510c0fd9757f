"""A fresh ``python -m worker`` process per measured step, and what it reports back.

The worker runs exactly as an operator starts it (same module, settings from the
environment), with the benchmark's job module added through ``AJS_JOB_MODULES``. Its
jobs report to files in a private directory (see :mod:`bench.recorder`). Before it is
stopped we read its peak RSS (the kernel's ``VmHWM``) and its CPU time; then it gets
SIGTERM, so it shuts down cleanly and its PostgreSQL backends flush their statistics
(the commit counts of the step), and SIGKILL only if it hangs.

With ``profile`` set, py-spy starts the worker and samples it (``--nonblocking``: the
target is not paused) into a raw collapsed-stack file; see :mod:`bench.profile`.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO, Any

from bench.counters import peak_rss_mb, process_cpu_s
from bench.testbed import ROOT, Target

# As the worker image runs it (worker/Dockerfile): -OO drops docstrings, 2.4 MB of a
# worker's resident memory that it never reads (bench/RESULTS.md, "Issue 12").
WORKER = [sys.executable, "-OO", "-m", "worker"]


@dataclass
class Exit:
    rss_mb: float
    cpu_s: float
    returncode: int | None


def py_spy() -> list[str]:
    """py-spy is a tool, not a dependency of the project: use it from PATH, else uvx."""
    found = shutil.which("py-spy")
    return [found] if found else ["uvx", "--from", "py-spy", "py-spy"]


class WorkerProcess:
    def __init__(self, target: Target, concurrency: int, expect: int, mode: str,
                 log: IO[bytes], profile: str | None = None) -> None:
        self.out = tempfile.mkdtemp(prefix="ajs-bench-")
        env = target.env(BENCH_EXPECT=str(expect), BENCH_OUT=self.out, BENCH_MODE=mode,
                         AJS_WORKER_CONCURRENCY=str(concurrency))
        cmd = WORKER
        if profile:
            cmd = [*py_spy(), "record", "--nonblocking", "--rate", "250", "--format", "raw",
                   "--output", profile, "--", *WORKER]
        self.t_spawn = time.time()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = find_below(self.proc.pid, b"worker") if profile else self.proc.pid

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def has(self, name: str) -> bool:
        return os.path.exists(self.path(name))

    async def wait_for(self, name: str, within: float) -> None:
        """Poll for a file every 10 ms; the polling does not touch the job timestamps."""
        deadline = time.monotonic() + within
        while not self.has(name):
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode} before "
                                   f"'{name}' (see the worker log)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no '{name}' from the worker after {within:g} s")
            await asyncio.sleep(0.01)

    def done(self) -> dict[str, Any]:
        with open(self.path("done")) as f:
            data: dict[str, Any] = json.load(f)
        return data

    def latencies(self) -> list[float]:
        values: list[float] = []
        for name in glob.glob(self.path("lat.*")):
            with open(name, "rb") as f:
                data = f.read()
            values.extend(v for (v,) in struct.iter_unpack("d", data[: len(data) // 8 * 8]))
        return values

    async def stop(self, grace: float = 30.0) -> Exit:
        rss, cpu = peak_rss_mb(self.pid), process_cpu_s(self.pid)
        if self.proc.poll() is None:
            # The worker itself gets SIGTERM; a profiler above it then writes its file.
            os.kill(self.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.out, ignore_errors=True)
        return Exit(round(rss, 1), round(cpu, 2), self.proc.returncode)


def find_below(root: int, module: bytes, within: float = 30.0) -> int:
    """The pid of the ``python -m <module>`` process under a profiler (py-spy, maybe
    itself under uvx): the one whose argv has ``-m module`` and no ``record``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for pid in _descendants(root):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"-m" in argv and module in argv and b"record" not in argv:
                return pid
        time.sleep(0.005)
    raise TimeoutError(f"no 'python -m {module.decode()}' process under pid {root}")


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out
