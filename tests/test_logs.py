"""Log lines outside Lambda: one JSON object per line, with the keys powertools' Logger
writes on Lambda, so a log pipeline sees one shape from every process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WRITER = """
from shared.observability.logs import JobLog, get_logger
log = get_logger("worker")
log.info("claimed", extra={"jobs": 3})
JobLog(log, "j-1", "email", 2).warning("slow")
log.debug("not shown at INFO")
try:
    raise ValueError("boom")
except ValueError:
    log.exception("attempt failed", extra={"job_id": "j-2"})
"""


def _lines(**env: str) -> list[dict[str, object]]:
    done = subprocess.run([sys.executable, "-c", WRITER], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env})
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_worker_lines_are_json_with_the_job_keys() -> None:
    claimed, slow, failed = _lines(AJS_LOG_LEVEL="INFO")
    for line in (claimed, slow, failed):
        assert {"level", "location", "message", "timestamp", "service"} <= set(line)
        assert line["service"] == "worker"
    assert claimed["message"] == "claimed" and claimed["jobs"] == 3
    assert (slow["level"], slow["job_id"], slow["job_type"], slow["attempt"]) == (
        "WARNING", "j-1", "email", 2)
    assert failed["level"] == "ERROR" and failed["job_id"] == "j-2"
    assert failed["exception_name"] == "ValueError"
    assert "boom" in str(failed["exception"])


def test_the_level_comes_from_the_settings_variable() -> None:
    lines = _lines(AJS_LOG_LEVEL="DEBUG")
    assert [line["message"] for line in lines] == [
        "claimed", "slow", "not shown at INFO", "attempt failed"]
