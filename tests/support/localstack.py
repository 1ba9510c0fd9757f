"""LocalStack's runtime on the host, one per test session, for the tests that check our
AWS integrations against something closer to AWS than moto (S3, SES, Secrets Manager,
SSM, and an EventBridge rule that really fires every minute).

Why on the host: there is no Docker here, and ``localstack start`` now wants an auth
token, but the runtime itself (``python -m localstack.runtime.main``) runs without one.
Why these pins: localstack-core 4.13.1 is the newest release that runs on Python 3.11
(later ones use 3.12 syntax), and on 3.11 it needs ``cbor2<6`` and ``pyopenssl<26.2``.
It gets its own virtual environment, outside the app's, so its pins never fight ours:
``$AJS_LOCALSTACK_VENV`` or ``~/.cache/ajs-localstack/venv``, created on first use
(about a minute) or ahead of time with ``python -m tests.support.localstack install``.

It listens on loopback only, with dummy credentials, and every outbound request it
tries (it fetches a few things at start) goes to a dead proxy on 127.0.0.1:9.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PINS = ("localstack-core[runtime]==4.13.1", "cbor2<6", "pyopenssl<26.2")
SERVICES = ("s3", "sqs", "ses", "events", "secretsmanager", "ssm")
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_SESSION_TOKEN": "test", "AWS_DEFAULT_REGION": REGION,
               "AWS_EC2_METADATA_DISABLED": "true"}
TICK_RULE = "ajs-test-tick"
START_TIMEOUT = 90.0


def venv_dir() -> Path:
    configured = os.environ.get("AJS_LOCALSTACK_VENV")
    return Path(configured) if configured else Path.home() / ".cache/ajs-localstack/venv"


def ensure_venv() -> Path:
    """The LocalStack interpreter, installing it first when missing or stale. A file lock
    keeps two test sessions on one machine from building it at once."""
    venv = venv_dir()
    python = venv / "bin/python"
    marker = venv / "ajs-pins.txt"
    wanted = "\n".join(PINS)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and marker.exists() and marker.read_text() == wanted:
            return python
        shutil.rmtree(venv, ignore_errors=True)
        uv = os.environ.get("UV") or shutil.which("uv")  # `uv run` names itself in UV
        if uv:
            subprocess.run([uv, "venv", "--quiet", "--python", "3.11", str(venv)], check=True)
            subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python), *PINS],
                           check=True)
        else:
            subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PINS],
                           check=True)
        marker.write_text(wanted)
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalStack:
    """A running LocalStack: boto3 clients for it, its record of sent mail, and the
    one-minute EventBridge rule the scheduler test waits on."""

    def __init__(self, python: Path, services: tuple[str, ...] = SERVICES) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="ajs-localstack-"))
        self.log_path = self.dir / "localstack.log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", str(self.dir)),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.dir),
            **CREDENTIALS,
            # hypercorn binds exactly this address (the default server binds 0.0.0.0).
            "GATEWAY_LISTEN": f"127.0.0.1:{self.port}",
            "GATEWAY_SERVER": "hypercorn",
            "LOCALSTACK_HOST": f"localhost:{self.port}",
            "SQS_ENDPOINT_STRATEGY": "path",
            "LOCALSTACK_VOLUME_DIR": str(self.dir / "volume"),
            "DNS_ADDRESS": "0",
            "DISABLE_EVENTS": "1",
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "HTTP_PROXY": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1,localhost",
            "SERVICES": ",".join(services),
        }
        self.services = services
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(python), "-m", "localstack.runtime.main"], env=env, cwd=self.dir,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._tick: tuple[str, str] | None = None
        self._tick_thread: threading.Thread | None = None
        self._tick_error: BaseException | None = None

    # --- life ---------------------------------------------------------------------------

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> LocalStack:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError):
                health = self._get_json("/_localstack/health")
                states = health.get("services", {})
                if all(states.get(s) in ("available", "running") for s in self.services):
                    return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"LocalStack did not become healthy:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        # Its own session (start_new_session): the group holds LocalStack and any helper
        # process it started, and nothing else. Its graceful shutdown can take 15 s or
        # more; the tests need none of its state, so it gets 3.
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    # --- talking to it ------------------------------------------------------------------

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id="test", aws_secret_access_key="test")

    def settings(self) -> dict[str, Any]:
        """Settings that point the code under test at this LocalStack."""
        return {"aws_endpoint_url": self.endpoint, "aws_region": REGION}

    def sent_emails(self) -> list[dict[str, Any]]:
        """LocalStack's record of the mail SES sent (``GET /_aws/ses``)."""
        messages: list[dict[str, Any]] = self._get_json("/_aws/ses").get("messages", [])
        return messages

    def new_bucket(self) -> str:
        name = "ajs-" + secrets.token_hex(6)
        self.client("s3").create_bucket(Bucket=name)
        return name

    def _get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.endpoint + path, timeout=5) as response:
            return json.loads(response.read())

    # --- the one-minute rule ------------------------------------------------------------

    def start_tick_rule(self) -> None:
        """Create the ``rate(1 minute)`` rule and its SQS target now, in the background.
        EventBridge first fires a minute after the rule exists, so starting the clock at
        session start lets the other tests run while the scheduler test's minute passes."""
        if self._tick_thread is None:
            self._tick_thread = threading.Thread(target=self._make_tick_rule, daemon=True,
                                                 name="localstack-tick-rule")
            self._tick_thread.start()

    def tick_queue(self) -> tuple[str, str]:
        """(queue URL, rule ARN) of the one-minute rule's SQS target."""
        self.start_tick_rule()
        assert self._tick_thread is not None
        self._tick_thread.join(60)
        if self._tick is None:
            raise RuntimeError(f"the tick rule was not created: {self._tick_error!r}")
        return self._tick

    def _make_tick_rule(self) -> None:
        try:
            sqs, events = self.client("sqs"), self.client("events")
            url = sqs.create_queue(QueueName=TICK_RULE)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
                "Attributes"]["QueueArn"]
            rule = events.put_rule(Name=TICK_RULE, ScheduleExpression="rate(1 minute)",
                                   State="ENABLED")["RuleArn"]
            events.put_targets(Rule=TICK_RULE, Targets=[{"Id": "queue", "Arn": arn}])
            self._tick = (url, rule)
        except BaseException as exc:  # reported by tick_queue() in the test that waits
            self._tick_error = exc


_shared: LocalStack | None = None


def shared_localstack() -> LocalStack:
    """The session's LocalStack, started on first use."""
    global _shared
    if _shared is None:
        instance = LocalStack(ensure_venv())
        try:
            instance.wait_healthy()
        except BaseException:
            instance.stop()
            raise
        _shared = instance
    return _shared


def stop_shared() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None


@pytest.fixture(scope="session")
def localstack() -> Iterator[LocalStack]:
    """One LocalStack for the whole session (start ~2 s, first call to a service 3-5 s),
    stopped at the end. Its one-minute rule starts ticking at once (see start_tick_rule)."""
    instance = shared_localstack()
    instance.start_tick_rule()
    yield instance
    stop_shared()


@pytest.fixture
def aws_env(localstack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> LocalStack:
    """LocalStack, with dummy credentials in this test's environment (boto3's default
    chain reads them; subprocesses the test spawns inherit them)."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return localstack


def main(argv: list[str]) -> int:
    """``python -m tests.support.localstack install``: build the venv ahead (CI)."""
    if argv[:1] != ["install"]:
        print("usage: python -m tests.support.localstack install", file=sys.stderr)
        return 2
    print(ensure_venv())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
