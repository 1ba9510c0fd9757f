"""The Grafana dashboard and its provisioning: valid dashboard JSON, the panels an
operator needs, queries Prometheus can parse, and provisioning that finds both."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.prom import ROOT, dashboards, panel_queries, panels, substitute

GRAFANA = ROOT / "infra" / "grafana"
PANEL_TYPES = {"row", "stat", "timeseries", "gauge", "bargauge", "table", "text"}
BUILTIN_VARS = {"__rate_interval", "__interval", "__range"}
# What the issue asks the dashboard to show, by panel title.
REQUIRED_PANELS = ["Throughput by type", "Success rate (10 min)", "Job duration p50 / p95 / p99",
                   "Queue depth by priority", "Processing jobs by worker", "Workers",
                   "Retries by type", "Dead letter queue", "Wait to start p50 / p95 / p99"]


def provisioned_datasources() -> list[dict[str, Any]]:
    doc = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert doc["apiVersion"] == 1
    return list(doc["datasources"])


def test_dashboard_json_has_grafanas_shape() -> None:
    assert dashboards(), "no dashboard JSON under infra/grafana/dashboards"
    uids = set()
    for path, dash in dashboards():
        assert dash.get("id") is None, f"{path.name}: provisioned dashboards carry no id"
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dash["uid"]), path.name
        uids.add(dash["uid"])
        assert dash["title"] and isinstance(dash["schemaVersion"], int)
        assert dash["schemaVersion"] >= 36
        assert {"from", "to"} <= set(dash["time"])
        ids = [p["id"] for p in panels(dash)]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        titles = [p["title"] for p in panels(dash)]
        assert len(titles) == len(set(titles)), f"{path.name}: duplicate panel titles"
        for panel in panels(dash):
            assert panel["type"] in PANEL_TYPES, panel["title"]
            grid = panel["gridPos"]
            assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y"))
            assert grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
            if panel["type"] == "row":
                continue
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), panel["title"]
            assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    assert len(uids) == len(dashboards())


def test_panels_and_variables_use_the_provisioned_datasource() -> None:
    (source,) = provisioned_datasources()
    assert source["type"] == "prometheus"
    for _, dash in dashboards():
        defined = {v["name"] for v in dash["templating"]["list"]}
        for var in dash["templating"]["list"]:
            assert var["datasource"]["uid"] == source["uid"]
        for panel in panels(dash):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
            for target in panel["targets"]:
                used = set(re.findall(r"\$(\w+)", target["expr"]))
                assert used <= defined | BUILTIN_VARS, (panel["title"], used - defined)


def test_dashboard_provider_loads_the_dashboards_directory() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning/dashboards/ajs.yml").read_text())
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    mount = f"./infra/grafana/dashboards:{provider['options']['path']}"
    # The provider's comment and the README give the same volume mount.
    assert mount in (GRAFANA / "provisioning/dashboards/ajs.yml").read_text()
    assert mount in (ROOT / "docs" / "observability.md").read_text()


def test_dashboard_has_the_panels_an_operator_needs() -> None:
    titles = {p["title"] for _, dash in dashboards() for p in panels(dash)}
    missing = [t for t in REQUIRED_PANELS if t not in titles]
    assert not missing, missing


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool: Debian's prometheus")
def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """Offline check: each query as a recording rule, which promtool parses."""
    rules = [{"record": f"dashboard:query_{i}", "expr": substitute(expr)}
             for i, (_, expr) in enumerate(panel_queries())]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
