"""A real Pushgateway and a real Prometheus (Debian's ``prometheus-pushgateway`` and
``prometheus`` packages) on free loopback ports, each with its own temporary data, for
the observability tests. Prometheus runs the repository's own configuration and alert
rules, with only the target and the intervals changed for a test."""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import free_port, stop_process
from tests.support.waits import eventually

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
DASHBOARDS_DIR = ROOT / "infra" / "grafana" / "dashboards"
# Values for Grafana's variables when a dashboard query runs outside Grafana. The window
# is longer than any test, so rate() over it sees every sample a test produced.
GRAFANA_VARS = {"$__rate_interval": "10m", "$__interval": "10m", "$__range": "10m",
                "$queue": ".*", "$job_type": ".*"}


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: apt-get install -y "
                           "--no-install-recommends prometheus prometheus-pushgateway")
    return path


class Server:
    """A child process with a temporary directory, stopped and cleaned on ``stop()``."""

    def __init__(self, args: list[str], port: int, workdir: Path) -> None:
        self.port = port
        self.dir = workdir
        self.log = open(workdir / "server.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log, cwd=workdir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self, client: httpx.AsyncClient) -> None:
        async def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.dir / 'server.log').read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                return (await client.get(f"{self.url}/-/ready")).status_code == 200
            return False

        await eventually(up, timeout=20, interval=0.05, what=f"{self.url} ready")

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Pushgateway(Server):
    def __init__(self) -> None:
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="ajs-pushgateway-"))
        super().__init__([_binary("prometheus-pushgateway"),
                          f"--web.listen-address=127.0.0.1:{port}",
                          "--persistence.file=",  # keep nothing on disk
                          "--log.level=warn"], port, workdir)

    async def groups(self, client: httpx.AsyncClient) -> list[dict[str, str]]:
        """The grouping keys (labels) of every group the Pushgateway holds."""
        body = (await client.get(f"{self.url}/api/v1/metrics")).json()
        return [g["labels"] for g in body["data"]]

    async def samples(self, client: httpx.AsyncClient) -> list[tuple[str, dict[str, str], float]]:
        """Every sample it would give Prometheus: (name, labels, value)."""
        text = (await client.get(f"{self.url}/metrics")).text
        return [(s.name, s.labels, s.value)
                for fam in text_string_to_metric_families(text) for s in fam.samples]


class Prometheus(Server):
    def __init__(self, pushgateway: Pushgateway, interval: str = "1s") -> None:
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="ajs-prometheus-"))
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"]["scrape_interval"] = interval
        config["global"]["evaluation_interval"] = interval
        config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
        (scrape,) = config["scrape_configs"]
        scrape["static_configs"] = [{"targets": [f"127.0.0.1:{pushgateway.port}"]}]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        super().__init__([_binary("prometheus"),
                          f"--config.file={workdir / 'prometheus.yml'}",
                          f"--storage.tsdb.path={workdir / 'data'}",
                          f"--web.listen-address=127.0.0.1:{port}",
                          "--log.level=warn"], port, workdir)

    async def query(self, client: httpx.AsyncClient, expr: str,
                    at: float | None = None) -> list[dict[str, Any]]:
        """An instant query; raises with Prometheus' own message when it refuses it."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = (await client.get(f"{self.url}/api/v1/query", params=params)).json()
        if body.get("status") != "success":
            raise AssertionError(f"query failed: {expr!r}: {body.get('error')}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    async def values(self, client: httpx.AsyncClient, expr: str, by: str | None = None,
                     at: float | None = None) -> dict[str, float]:
        """Result values keyed by one label (or "" for a single unlabelled result)."""
        results = await self.query(client, expr, at)
        out = {(r["metric"].get(by, "") if by else ""): float(r["value"][1]) for r in results}
        assert len(out) == len(results), f"{expr!r}: {by!r} does not tell results apart"
        return out

    async def rules(self, client: httpx.AsyncClient) -> list[dict[str, Any]]:
        body = (await client.get(f"{self.url}/api/v1/rules")).json()
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]


@contextlib.asynccontextmanager
async def monitoring(client: httpx.AsyncClient, prometheus: bool = True
                     ) -> AsyncIterator[tuple[Pushgateway, Prometheus | None]]:
    """A Pushgateway, and a Prometheus scraping it every second."""
    servers: list[Server] = []
    try:
        pgw = Pushgateway()
        servers.append(pgw)
        prom = Prometheus(pgw) if prometheus else None
        if prom is not None:
            servers.append(prom)
        for s in servers:
            await s.ready(client)
        yield pgw, prom
    finally:
        for s in servers:
            s.stop()


# --- the expressions the repository ships -----------------------------------------------

def dashboards() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, json.loads(p.read_text())) for p in sorted(DASHBOARDS_DIR.glob("*.json"))]


def panels(dashboard: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def panel_queries() -> list[tuple[str, str]]:
    """(where, expression) for every panel target of every dashboard."""
    out = []
    for path, dash in dashboards():
        for panel in panels(dash):
            for target in panel.get("targets", []):
                out.append((f"{path.name}: {panel['title']} {target['refId']}", target["expr"]))
    return out


def rule_queries() -> list[tuple[str, str]]:
    out = []
    for path in sorted(PROMETHEUS_DIR.glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for group in (doc or {}).get("groups", []):
            for rule in group["rules"]:
                out.append((f"{path.name}: {rule.get('alert') or rule.get('record')}",
                            rule["expr"]))
    return out


def substitute(expr: str) -> str:
    """Replace Grafana's variables with values Prometheus accepts."""
    for name in sorted(GRAFANA_VARS, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARS[name])
    leftover = re.findall(r"\$\w+", expr)
    if leftover:
        raise AssertionError(f"unknown dashboard variables {leftover} in {expr!r}")
    return expr


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
