"""Reading a process's memory from /proc, for tests that bound it."""

from __future__ import annotations

from pathlib import Path


def kib(pid: int, field: str) -> int:
    """A field of /proc/PID/status in KiB (VmRSS, VmHWM, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """VmHWM := current RSS, so VmHWM then reads the peak of what follows."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
