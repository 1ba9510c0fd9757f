"""Start the whole system on one machine (the README's first command).

- PostgreSQL and Redis: ``DATABASE_URL`` / ``REDIS_URL`` when set; else the servers on
  their default local ports; where none answers, throwaway servers started here (from
  Debian's binaries, installed with apt-get when missing and run as root) and removed on
  exit.
- Migrations run by themselves.
- Access: a local admin API key, created on first use and kept in ``.local/dev-api-key``
  (reused while the database still knows it), printed so that the README's curl
  examples work (``-H "Authorization: Bearer $AJS_KEY"``). Authentication stays on, as
  everywhere else: the key is what a newcomer's first curl sends.
- AWS (S3 for job artifacts, SES for email): ``AJS_AWS_ENDPOINT_URL`` when set, else a
  moto server started here with a bucket and a verified sender, so every seed job type
  works offline; a webhook signing secret is generated unless ``AJS_WEBHOOK_SECRET`` is set.
- The API on http://127.0.0.1:8000 (uvicorn), one worker (``python -m worker``), and the
  scheduler function invoked every few seconds with an EventBridge-shaped event
  (``python -m functions.scheduler --every N``).
- Ctrl-C stops everything; the worker drains gracefully.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
KEY_FILE = ROOT / ".local" / "dev-api-key"
DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def say(msg: str) -> None:
    print(f"[local] {msg}", flush=True)


def reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 1.0):
            return True
    except OSError:
        return False


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port(preferred: int) -> int:
    if port_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"[local] {what} did not come up within {seconds:.0f} s")
        time.sleep(0.1)


def apt_install(*packages: str) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit(f"[local] please install {' '.join(packages)} (Debian packages), "
                         "or set DATABASE_URL / REDIS_URL to running servers")
    say(f"installing {' '.join(packages)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
                   check=True, env=env)


def pg_bindir() -> str | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if shutil.which("initdb"):
        candidates.insert(0, str(Path(shutil.which("initdb") or "").parent))
    for d in candidates:
        if Path(d, "initdb").exists() and Path(d, "pg_ctl").exists():
            return d
    return None


class Throwaway:
    """Servers started here, stopped (and their data removed) on exit."""

    def __init__(self) -> None:
        self.cleanups: list[object] = []

    def postgres(self) -> str:
        bindir = pg_bindir()
        if bindir is None:
            apt_install("postgresql")
            bindir = pg_bindir()
            if bindir is None:
                raise SystemExit("[local] no initdb found after installing postgresql")
        port = free_port(5432)
        data = tempfile.mkdtemp(prefix="ajs-pg-")
        run_as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as 'postgres'
            shutil.chown(data, "postgres")
            run_as = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*run_as, f"{bindir}/initdb", "-D", data, "-U", "postgres", "-A",
                        "trust", "--no-sync", "-E", "UTF8"], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([*run_as, f"{bindir}/pg_ctl", "-D", data, "-l", f"{data}/log", "-w",
                        "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"],
                       check=True, stdout=subprocess.DEVNULL)

        def stop() -> None:
            subprocess.run([*run_as, f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "-w",
                            "stop"], check=False, stdout=subprocess.DEVNULL)
            shutil.rmtree(data, ignore_errors=True)

        self.cleanups.append(stop)
        say(f"started a throwaway PostgreSQL on 127.0.0.1:{port} (data in {data})")
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def redis(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            apt_install("redis-server")
            binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        port = free_port(6379)
        data = tempfile.mkdtemp(prefix="ajs-redis-")
        proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save",
                                 "", "--appendonly", "no", "--dir", data],
                                stdout=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: reachable(url), 10, "redis-server")

        def stop() -> None:
            proc.terminate()
            proc.wait(10)
            shutil.rmtree(data, ignore_errors=True)

        self.cleanups.append(stop)
        say(f"started a throwaway Redis on 127.0.0.1:{port}")
        return url

    def aws(self, env: dict[str, str]) -> dict[str, str]:
        """A moto server standing in for S3 and SES, prepared for the seed job types."""
        port = free_port(5000)
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: reachable(url), 30, "the moto server")

        def stop() -> None:
            proc.terminate()
            proc.wait(10)

        self.cleanups.append(stop)
        aws = {"AJS_AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "local",
               "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1",
               "AJS_AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
               "AJS_REPORTS_BUCKET": env.get("AJS_REPORTS_BUCKET", "ajs-local-artifacts")}
        import boto3  # only here: the rest of this script needs no AWS SDK

        session = boto3.session.Session(aws_access_key_id="local",
                                        aws_secret_access_key="local",
                                        region_name="us-east-1")
        session.client("s3", endpoint_url=url).create_bucket(Bucket=aws["AJS_REPORTS_BUCKET"])
        sender = env.get("AJS_EMAIL_SENDER", "no-reply@example.com")
        session.client("ses", endpoint_url=url).verify_email_identity(EmailAddress=sender)
        say(f"AWS stand-in (moto) on {url}: bucket s3://{aws['AJS_REPORTS_BUCKET']}, "
            f"sent mail at {url}/moto-api/data.json")
        return aws

    def stop(self) -> None:
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()  # type: ignore[operator]


def key_is_live(env: dict[str, str], key: str) -> bool:
    import asyncio

    import asyncpg

    from shared.store.api_keys import ApiKeyStore, digest

    async def check() -> bool:
        conn = await asyncpg.connect(env["DATABASE_URL"], server_settings={
            "search_path": env.get("AJS_DB_SCHEMA", "public")})
        try:
            return await ApiKeyStore(conn).lookup(digest(key), 60.0) is not None
        finally:
            await conn.close()

    return asyncio.run(check())


def local_key(env: dict[str, str], path: Path) -> str:
    """The local admin key: the one kept in ``path`` while the database knows it, else a
    new one made with the keys CLI (a throwaway database never knows the old one)."""
    if path.is_file():
        key = path.read_text().strip()
        if key and key_is_live(env, key):
            say(f"reusing the local admin API key kept in {path}")
            return key
    made = subprocess.run([sys.executable, "-m", "functions.api.keys", "create", "--scopes",
                           "admin", "--name", "local admin (scripts/dev.sh)"],
                          cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    key = made.stdout.strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    say(f"created a local admin API key, kept in {path}")
    return key


def resolve(name: str, default: str, start: object, throwaway: bool) -> str:
    url = os.environ.get(name)
    if throwaway:
        return start()  # type: ignore[operator,no-any-return]
    if url:
        if not reachable(url):
            raise SystemExit(f"[local] {name}={url} does not answer")
        return url
    if reachable(default):
        say(f"using the {name.split('_')[0].title()} server at {default}")
        return default
    return start()  # type: ignore[operator,no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bash scripts/dev.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    parser.add_argument("--tick", type=float, default=5.0,
                        help="seconds between scheduler ticks (default 5)")
    parser.add_argument("--concurrency", type=int, default=10, help="worker concurrency")
    parser.add_argument("--throwaway", action="store_true",
                        help="always start throwaway PostgreSQL and Redis servers")
    parser.add_argument("--key-file", type=Path, default=KEY_FILE,
                        help=f"where the local admin API key is kept (default {KEY_FILE})")
    args = parser.parse_args(argv)

    servers = Throwaway()
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        db = resolve("DATABASE_URL", DEFAULT_DB, servers.postgres, args.throwaway)
        redis = resolve("REDIS_URL", DEFAULT_REDIS, servers.redis, args.throwaway)
        env = {**os.environ, "DATABASE_URL": db, "REDIS_URL": redis,
               "PYTHONPATH": str(ROOT), "POWERTOOLS_TRACE_DISABLED": "true"}
        if not env.get("AJS_AWS_ENDPOINT_URL"):
            env.update(servers.aws(env))
        if not env.get("AJS_WEBHOOK_SECRET"):
            key = base64.b64encode(secrets.token_bytes(24)).decode()
            env["AJS_WEBHOOK_SECRET"] = f"whsec_{key}"
        say("running migrations")
        subprocess.run([sys.executable, "-m", "shared.store.migrate", "upgrade"], check=True,
                       cwd=ROOT, env=env)
        key = local_key(env, args.key_file)
        commands = {
            "api": [sys.executable, "-m", "uvicorn", "functions.api.app:serve",
                    "--factory", "--host", "127.0.0.1", "--port", str(args.port),
                    "--no-access-log"],
            "worker": [sys.executable, "-m", "worker", "--concurrency",
                       str(args.concurrency)],
            "scheduler": [sys.executable, "-m", "functions.scheduler", "--every",
                          str(args.tick)],
        }
        for name, cmd in commands.items():
            children.append((name, subprocess.Popen(cmd, cwd=ROOT, env=env)))
        wait_until(lambda: stopping or reachable(f"http://127.0.0.1:{args.port}"), 30, "the API")
        if not stopping:
            say(f"API on http://127.0.0.1:{args.port}/api/v1 (docs: /api/v1/docs); "
                "worker and scheduler running. Ctrl-C stops everything.")
            say("every request but /health needs the local admin key; in another shell:")
            say(f"  export AJS_KEY={key}   # also: export AJS_KEY=$(cat {args.key_file})")
            say(f'  curl -H "Authorization: Bearer $AJS_KEY" '
                f"http://127.0.0.1:{args.port}/api/v1/jobs")
        while not stopping:
            for name, proc in children:
                if proc.poll() is not None:
                    say(f"{name} exited with status {proc.returncode}; stopping")
                    stopping = True
            time.sleep(0.2)
    finally:
        say("stopping")
        for _, proc in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for _, proc in children:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
        servers.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
