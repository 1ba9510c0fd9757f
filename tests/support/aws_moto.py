"""One moto server per test process, in its own OS process, standing in for AWS (S3, SES).

A separate process (not moto's in-process ThreadedMotoServer) so that memory measured in
the test process is ours alone, and so that the code under test talks to it over HTTP
exactly as it talks to AWS or LocalStack: only ``aws_endpoint_url`` differs.

moto takes several seconds to import, so the server process starts when this module is
imported (at test collection) and the first test that needs it waits for it to answer.
"""

from __future__ import annotations

import atexit
import contextlib
import secrets
import subprocess
import sys
import time
from typing import Any

import boto3
import httpx
import pytest

from tests.support.servers import free_port

REGION = "us-east-1"
SENDER = "jobs@example.com"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_SESSION_TOKEN": "test", "AWS_EC2_METADATA_DISABLED": "true"}


class Moto:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        atexit.register(self.stop)
        self.ready = False

    def wait_ready(self) -> Moto:
        if self.ready:
            return self
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.endpoint}/moto-api/data.json", timeout=1).is_success:
                    break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("moto server did not start")
            time.sleep(0.05)
        # moto 5.2: once a multipart upload happened, data.json (our view of sent SES mail)
        # fails with a 500, because reading a part's restore status looks up a bucket the
        # part does not name. Keeping that status from ever advancing avoids the lookup.
        httpx.post(f"{self.endpoint}/moto-api/state-manager/set-transition", timeout=10,
                   json={"model_name": "s3::keyrestore",
                         "transition": {"progression": "manual", "times": 10**9}}
                   ).raise_for_status()
        self.ready = True
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint,  # type: ignore[call-overload]
                            region_name=REGION, aws_access_key_id="test",
                            aws_secret_access_key="test")

    def new_bucket(self) -> str:
        name = "ajs-" + secrets.token_hex(6)
        self.client("s3").create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes) -> str:
        self.client("s3").put_object(Bucket=bucket, Key=key, Body=data)
        return f"s3://{bucket}/{key}"

    def get(self, uri: str) -> bytes:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        body: bytes = self.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def sent_emails(self) -> list[dict[str, Any]]:
        """Every message moto's SES has sent (its model data: id, source, subject, body,
        destinations)."""
        data = httpx.get(f"{self.endpoint}/moto-api/data.json", timeout=10).json()
        return list(data.get("ses", {}).get("Message", []))

    def settings(self) -> dict[str, Any]:
        """Settings that point the code under test at this server. Every test makes its
        own buckets, so jobs may write anywhere (tests of the write prefixes override it)."""
        return {"aws_endpoint_url": self.endpoint, "aws_region": REGION,
                "email_sender": SENDER, "s3_write_prefixes": ["*"]}


_server = Moto()  # starts now; moto_server() waits until it answers


def moto_server() -> Moto:
    return _server.wait_ready()


def use_moto(monkeypatch: pytest.MonkeyPatch) -> Moto:
    """The shared server, with dummy credentials in the environment for this test (also
    inherited by any worker subprocess the test spawns)."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return moto_server()
