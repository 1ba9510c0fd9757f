"""How a benchmark job reports that it started, without touching Redis or PostgreSQL.

Why this shape: the drain and latency figures must measure the scheduler, not the
measuring. So a job never writes to the stores under test; it only bumps an in-process
counter and, in latency mode, appends one 8-byte double to a per-process file with a
single ``os.write`` on an ``O_APPEND`` descriptor (a microsecond or two).

The driver and the job talk through files in ``BENCH_OUT`` and three environment
variables, the same protocol as the team's peer harness (``../shared/peers``), so the job
module works under either driver:

- ``BENCH_EXPECT``: how many counted jobs make the run complete;
- ``BENCH_OUT``: a directory; ``ready`` appears when a warm-up probe ran, ``done`` (JSON
  ``{t_first, t_last, n}``: wall-clock start times of the first and last job; we add the
  worker's CPU time at both, ``cpu_first``/``cpu_last``, so its CPU per job excludes
  start-up) when the count reaches ``BENCH_EXPECT``, and ``lat.<pid>`` holds the
  latencies;
- ``BENCH_MODE=latency``: also record each job's start minus its enqueue time.

A job whose ``t_enq`` is negative is a warm-up probe: it is not counted.

Our worker runs every job in one asyncio thread of one process, so a plain module-level
counter is exact; no lock or shared memory is needed.
"""

from __future__ import annotations

import json
import os
import struct
import time

_PACK = struct.Struct("d").pack


class Recorder:
    def __init__(self, out: str, expect: int, latency: bool) -> None:
        self.out = out
        self.expect = expect
        self.latency = latency
        self.count = 0
        self.t_first = 0.0
        self.cpu_first = 0.0
        self._fd = -1
        self._pid = -1

    @classmethod
    def from_env(cls) -> Recorder:
        return cls(os.environ.get("BENCH_OUT", ""), int(os.environ.get("BENCH_EXPECT") or 0),
                   os.environ.get("BENCH_MODE") == "latency")

    def record(self, t_enq: float) -> None:
        t = time.time()
        if not self.out:
            return  # not under a benchmark driver: nothing to report to
        if t_enq < 0:
            _touch(os.path.join(self.out, "ready"))
            return
        if self.latency:
            self._append(t - t_enq)
        self.count += 1
        if self.count == 1:
            self.t_first = t
            self.cpu_first = time.process_time()
        if self.count == self.expect:
            self._finish(t)

    def _append(self, seconds: float) -> None:
        pid = os.getpid()
        if self._pid != pid:  # opened lazily, and again after a fork
            self._fd = os.open(os.path.join(self.out, f"lat.{pid}"),
                               os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
            self._pid = pid
        os.write(self._fd, _PACK(seconds))

    def _finish(self, t_last: float) -> None:
        # Written whole, then renamed: the driver polls for "done" and must never read a
        # half-written file.
        tmp = os.path.join(self.out, "done.tmp")
        with open(tmp, "w") as f:
            json.dump({"t_first": self.t_first, "t_last": t_last, "n": self.count,
                       "cpu_first": self.cpu_first, "cpu_last": time.process_time()}, f)
        os.replace(tmp, os.path.join(self.out, "done"))


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


recorder = Recorder.from_env()
