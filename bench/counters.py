"""What a step cost the stores and the box: commits, Redis commands, CPU, load.

Taken before and after every step, so each figure comes with its price per job:

- PostgreSQL transactions: ``pg_stat_database.xact_commit`` of the benchmark's own
  database (every statement outside a transaction block is one; the statistics are
  flushed lazily, so we force a flush before reading), and WAL flushes to disk
  (``pg_stat_wal.wal_sync``, server-wide: on a shared server other databases add theirs),
  which is what a durable commit waits for;
- Redis commands (``INFO commandstats``: calls per command; commands run inside Lua
  scripts are counted too, under their own names) and Redis CPU (``INFO cpu``). Both are
  server-wide: on a Redis that other processes share they include their traffic;
- the box: all non-idle CPU time from ``/proc/stat``, steal, and the 1-minute load
  average, so a reader can judge how busy the shared machine was.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

from bench.testbed import Testbed

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Commands a client sends itself (one round trip each, or part of a pipeline). Everything
# else in commandstats is run by our Lua scripts inside an EVALSHA.
# (SADD is both: the cancel request pipelines one, rarely; scripts run it per enqueue.)
CLIENT_COMMANDS = {"evalsha", "eval", "blpop", "brpop", "publish", "subscribe", "ping",
                   "info", "script|load", "script", "scan", "unlink", "client|setinfo",
                   "hello", "select"}


@dataclass
class Snapshot:
    wall: float
    commits: int
    rollbacks: int
    wal_syncs: int
    wal_bytes: int
    redis: dict[str, int]
    redis_cpu: float
    cpu_busy: float
    cpu_steal: float
    load1: float


@dataclass
class Cost:
    seconds: float
    commits: int
    wal_syncs: int = 0
    wal_bytes: int = 0
    redis: dict[str, int] = field(default_factory=dict)
    busy_cores: float = 0.0
    steal_cores: float = 0.0
    load1: float = 0.0
    redis_cpu_s: float = 0.0

    @property
    def redis_client_calls(self) -> int:
        return sum(v for k, v in self.redis.items() if k in CLIENT_COMMANDS)

    @property
    def redis_total(self) -> int:
        return sum(self.redis.values())

    def per_job(self, n: int) -> dict[str, float]:
        if n <= 0:
            return {}
        return {"commits": round(self.commits / n, 3),
                "wal_syncs": round(self.wal_syncs / n, 3),
                "wal_bytes": round(self.wal_bytes / n),
                "redis_calls": round(self.redis_client_calls / n, 3),
                "redis_cmds": round(self.redis_total / n, 3)}

    def as_dict(self, n: int) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "commits": self.commits,
                "wal_syncs": self.wal_syncs, "wal_bytes": self.wal_bytes,
                "redis": dict(sorted(self.redis.items(), key=lambda kv: -kv[1])),
                "per_job": self.per_job(n), "busy_cores": round(self.busy_cores, 2),
                "steal_cores": round(self.steal_cores, 2), "load1": self.load1,
                "redis_cpu_s": round(self.redis_cpu_s, 2)}


def _cpu() -> tuple[float, float]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq
    return busy / CLK_TCK, v[7] / CLK_TCK


def load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


async def snapshot(bed: Testbed) -> Snapshot:
    await _sessions_gone(bed)
    await bed.db.execute("SELECT pg_stat_force_next_flush()")
    row = await bed.db.fetchrow(
        "SELECT xact_commit, xact_rollback, wal_sync, wal_bytes "
        "FROM pg_stat_database, pg_stat_wal WHERE datname = current_database()")
    stats = await bed.r.info("commandstats")
    redis = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    rcpu = await bed.r.info("cpu")
    busy, steal = _cpu()
    assert row is not None
    return Snapshot(time.monotonic(), int(row["xact_commit"]), int(row["xact_rollback"]),
                    int(row["wal_sync"]), int(row["wal_bytes"]), redis,
                    float(rcpu["used_cpu_user"]) + float(rcpu["used_cpu_sys"]),
                    busy, steal, load1())


async def _sessions_gone(bed: Testbed, within: float = 5.0) -> None:
    """Wait until the step's other sessions on our database have ended: a backend adds
    its counts to the statistics on its way out, a moment after its client hung up."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        others = await bed.db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()")
        if not others:
            return
        await asyncio.sleep(0.01)


def cost(a: Snapshot, b: Snapshot) -> Cost:
    wall = max(b.wall - a.wall, 1e-9)
    redis = {k: v - a.redis.get(k, 0) for k, v in b.redis.items() if v - a.redis.get(k, 0)}
    # The counter reads themselves: one commit per snapshot query pair, one INFO.
    return Cost(wall, b.commits - a.commits - 2, b.wal_syncs - a.wal_syncs,
                int(b.wal_bytes - a.wal_bytes), redis,
                (b.cpu_busy - a.cpu_busy) / wall, (b.cpu_steal - a.cpu_steal) / wall, b.load1,
                b.redis_cpu - a.redis_cpu)


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of one live process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    """The kernel's high-water mark of the process's resident set (VmHWM)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
