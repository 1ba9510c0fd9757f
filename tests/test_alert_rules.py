"""The alert rules and the Prometheus configuration: valid, and every alert unit-tested
with ``promtool test rules`` (a case where it fires and one where it must not)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.support.prom import PROMETHEUS_DIR, ROOT

RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "alerts_test.yml"
REQUIRED = {"QueueBacklogHigh", "QueueBacklogGrowing", "DeadLetterQueueGrowing",
            "WorkerStoppedPushing", "JobSuccessRateLow", "JobWaitLatencyHigh"}

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None,
                                reason="promtool comes with Debian's prometheus package")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60,
                          cwd=PROMETHEUS_DIR)


def alerts() -> dict[str, dict[str, object]]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_and_prometheus_config_are_valid() -> None:
    for args in (("check", "rules", str(RULES)), ("check", "config", "prometheus.yml")):
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_keeps_the_pushed_job_and_instance_labels() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (scrape,) = config["scrape_configs"]
    assert scrape["honor_labels"] is True
    assert config["rule_files"] == ["alerts.yml"]


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = set(alerts())
    assert names >= REQUIRED
    assert names <= firing, f"never seen firing: {names - firing}"
    assert names <= quiet, f"never seen quiet: {names - quiet}"


def test_every_alert_links_to_a_runbook_section() -> None:
    doc = (ROOT / "docs" / "observability.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", doc, flags=re.M)}
    for name, rule in alerts().items():
        runbook = rule["annotations"]["runbook"]  # type: ignore[index]
        path, _, anchor = runbook.partition("#")
        assert path == "docs/observability.md" and anchor in anchors, (name, runbook)
