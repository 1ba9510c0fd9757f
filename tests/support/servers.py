"""Private server processes for tests that must not disturb anyone else's data
(FLUSHALL, stopping a Redlock node): a real redis-server on a free loopback port."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian package redis-server)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="ajs-redis-")
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.2):
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL after 5 s if it has not gone."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def redis_servers(n: int = 1) -> Iterator[list[RedisServer]]:
    servers: list[RedisServer] = []
    try:
        for _ in range(n):
            servers.append(RedisServer())
        yield servers
    finally:
        for s in servers:
            s.stop()


class PostgresServer:
    """A throwaway PostgreSQL cluster (Debian's binaries) on a free loopback port, for tests
    that stop, restart or hold the server in a state the shared one must never be in.

    Runs as the ``postgres`` user when started as root (initdb refuses root), with fsync off
    unless asked (these tests are about availability, not durability) and otherwise
    PostgreSQL's defaults (autovacuum on).
    """

    def __init__(self, *, standby: bool = False, fsync: bool = False) -> None:
        import glob
        import os

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError("PostgreSQL binaries not found (Debian package postgresql)")
        self.bin = os.path.dirname(found[-1])
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="ajs-pg-")
        self.data = os.path.join(self.dir, "data")
        self.fsync = fsync
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run([*self._as, f"{self.bin}/initdb", "-D", self.data, "-U", "postgres",
                        "-A", "trust", "--no-sync"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        if standby:
            # A standby without hot standby refuses every connection with SQLSTATE 57P03
            # ("the database system is not accepting connections"), for as long as it runs.
            with open(os.path.join(self.data, "standby.signal"), "w"):
                pass
            with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
                conf.write("\nhot_standby = off\n")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        subprocess.run([*self._as, f"{self.bin}/pg_ctl", "-D", self.data, "-l",
                        f"{self.dir}/log", "-w", "-t", "30", "-o",
                        f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                        f"-c fsync={'on' if self.fsync else 'off'}", "start"],
                       check=True, stdout=subprocess.DEVNULL)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([*self._as, f"{self.bin}/pg_ctl", "-D", self.data, "-m", mode, "-w",
                        "stop"], check=False, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterServers:
    """A throwaway Redis Cluster: ``masters`` real redis-server processes in cluster mode
    (no replicas), each in its own temp directory on free loopback ports, joined with
    ``redis-cli --cluster create`` as ElastiCache and Valkey clusters are.

    The cluster bus port is chosen too (``--cluster-port``): the default, port + 10000, can
    fall outside the port range or on a port someone else holds.
    """

    def __init__(self, masters: int = 3) -> None:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            raise RuntimeError("redis-server/redis-cli are not installed (Debian redis-server)")
        self.ports: list[int] = []
        self.dirs: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(masters):
                port, bus = free_port(), free_port()
                folder = tempfile.mkdtemp(prefix="ajs-redis-cluster-")
                self.ports.append(port)
                self.dirs.append(folder)
                self.procs.append(subprocess.Popen(
                    [binary, "--bind", "127.0.0.1", "--port", str(port),
                     "--cluster-enabled", "yes", "--cluster-port", str(bus),
                     "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
                     "--save", "", "--appendonly", "no", "--dir", folder],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for port, proc in zip(self.ports, self.procs, strict=True):
                _wait_for_port(port, proc)
            subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", "0"],
                input=b"yes\n", check=True, timeout=60,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self._wait_until_ok(cli)
        except BaseException:
            self.stop()
            raise

    def _wait_until_ok(self, cli: str) -> None:
        """Every node must say ``cluster_state:ok`` (each learns the slot map by gossip)."""
        deadline = time.monotonic() + 30
        pending = list(self.ports)
        while pending:
            info = subprocess.run([cli, "-p", str(pending[0]), "cluster", "info"],
                                  capture_output=True, text=True, timeout=5).stdout
            if "cluster_state:ok" in info:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok on port {pending[0]}: {info[:200]}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        """One startup node: the client learns the others from CLUSTER SLOTS."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{p}/0" for p in self.ports]

    def move_slot(self, slot: int, to_port: int, batch: int = 10,
                  pause: float = 0.0) -> None:
        """Move one slot, keys and all, to the master on ``to_port`` while clients use it:
        the steps ``redis-cli --cluster reshard`` takes (IMPORTING/MIGRATING, MIGRATE
        ``batch`` keys at a time, as its ``--cluster-pipeline`` (10), SETSLOT NODE on every
        master), for the one slot a test chooses; ``pause`` seconds between batches keep
        the slot half moved for longer."""
        import redis

        nodes = {p: redis.Redis(port=p, decode_responses=True) for p in self.ports}
        try:
            ids = {p: str(n.execute_command("CLUSTER MYID")) for p, n in nodes.items()}
            src = next(int(primary[1]) for start, end, primary, *_ in
                       nodes[to_port].execute_command("CLUSTER SLOTS")
                       if int(start) <= slot <= int(end))
            if src == to_port:
                return
            nodes[to_port].execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[src])
            nodes[src].execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[to_port])
            while keys := nodes[src].execute_command("CLUSTER GETKEYSINSLOT", slot, batch):
                nodes[src].execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000,
                                           "KEYS", *keys)
                time.sleep(pause)
            for p in (to_port, src, *(q for q in self.ports if q not in (to_port, src))):
                nodes[p].execute_command("CLUSTER SETSLOT", slot, "NODE", ids[to_port])
        finally:
            for n in nodes.values():
                n.close()

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)
        for folder in self.dirs:
            shutil.rmtree(folder, ignore_errors=True)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", port), timeout=0.2):
            return
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} did not start")
        time.sleep(0.02)

