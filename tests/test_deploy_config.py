"""The deployment files agree with the code: every AJS_* variable that template.yaml and
infra/docker-compose.yml set is a real setting, the compose file's mounts and start-up
conditions hold, and the health checks that the image and ECS run answer from a real
``python -m worker``, which also stops cleanly on SIGTERM (exec-form CMD: it is PID 1 and
gets the signal itself)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import urllib.request
from typing import Any

import yaml

from shared.settings import Settings
from tests.conftest import ROOT
from tests.support.servers import free_port
from tests.support.waits import eventually

COMPOSE = ROOT / "infra" / "docker-compose.yml"
DOCKERFILE = ROOT / "worker" / "Dockerfile"
TEMPLATE = ROOT / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation's short tags (!Ref, !Sub, ...) as their long forms."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def _template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    return loaded


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _setting_names() -> set[str]:
    names = {f"AJS_{name.upper()}" for name in Settings.model_fields}
    return names | {"DATABASE_URL", "REDIS_URL"}


def test_template_sets_only_real_settings() -> None:
    template = _template()
    names = set(template["Globals"]["Function"]["Environment"]["Variables"])
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        names |= set(props.get("Environment", {}).get("Variables", {}))
        for container in props.get("ContainerDefinitions", []):
            names |= {v["Name"] for v in container.get("Environment", [])}
    ours = {n for n in names if n.startswith("AJS_")}
    assert ours and ours <= _setting_names(), ours - _setting_names()


def test_compose_sets_only_real_settings() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        env = {n for n in service.get("environment", {}) if n.startswith("AJS_")}
        assert env <= _setting_names(), (name, env - _setting_names())


def test_compose_mounts_exist_and_start_conditions_can_be_met() -> None:
    compose = _compose()
    services = compose["services"]
    image_has_healthcheck = "HEALTHCHECK" in DOCKERFILE.read_text()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), (name, source)
        for dependency, spec in service.get("depends_on", {}).items():
            target = services[dependency]
            if spec["condition"] == "service_healthy":
                own = target.get("healthcheck", {})
                assert not own.get("disable") and (own.get("test") or (
                    "build" in target and image_has_healthcheck)), (name, dependency)
            elif spec["condition"] == "service_completed_successfully":
                assert target.get("restart") == "no", (name, dependency)
    # The stack the issue asks for, and what the Lambda containers join for sam local.
    assert {"postgres", "redis", "localstack", "pushgateway", "prometheus", "grafana", "api",
            "worker", "scheduler"} <= set(services)
    assert compose["networks"]["default"]["name"] == "ajs"
    grace = int(services["worker"]["environment"]["AJS_SHUTDOWN_GRACE_SECONDS"])
    assert int(services["worker"]["stop_grace_period"].rstrip("s")) >= grace + 10


def _dockerfile_healthcheck() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])\s*$", text, re.MULTILINE)
    assert match, "worker/Dockerfile has no exec-form HEALTHCHECK"
    command: list[str] = json.loads(match.group(1))
    return command


def test_image_runs_the_worker_as_pid_1_and_not_as_root() -> None:
    text = DOCKERFILE.read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    cmd = re.findall(r"^CMD (.*)$", final_stage, re.MULTILINE)
    # Exec form (no shell); -OO: no docstrings, a smaller worker (the test below runs it so)
    assert cmd and json.loads(cmd[-1]) == ["python", "-OO", "-m", "worker"]
    assert "ENTRYPOINT" not in final_stage
    user = re.findall(r"^USER (\S+)", final_stage, re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("root", "0")


def _ecs_healthcheck(port: int) -> list[str]:
    template = _template()
    [container] = template["Resources"]["WorkerTaskDefinition"]["Properties"][
        "ContainerDefinitions"]
    command: list[Any] = container["HealthCheck"]["Command"]
    assert command[0] == "CMD"
    return [str(part["Fn::Sub"]).replace("${WorkerProbePort}", str(port))
            if isinstance(part, dict) else part for part in command[1:]]


async def _run(command: list[str], env: dict[str, str]) -> int:
    argv = [sys.executable if part == "python" else part for part in command]
    proc = await asyncio.create_subprocess_exec(*argv, env=env)
    return await asyncio.wait_for(proc.wait(), 30)


async def test_health_checks_answer_from_a_real_worker_that_stops_on_sigterm(
        spawn: Any) -> None:
    port = free_port()
    proc = await spawn("-OO", "-m", "worker", probe_port=port, probe_host="127.0.0.1")

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    await eventually(lambda: asyncio.to_thread(healthy), timeout=30, interval=0.1,
                     what="the worker's /healthz")
    env = {"PATH": os.environ["PATH"], "AJS_PROBE_PORT": str(port)}
    assert await _run(_dockerfile_healthcheck(), env) == 0
    assert await _run(_ecs_healthcheck(port), env) == 0
    # And a health check that finds nothing listening fails, as it must.
    assert await _run(_dockerfile_healthcheck(), {**env, "AJS_PROBE_PORT": "1"}) != 0

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0, proc.log_path.read_text()


def test_sam_local_env_points_at_the_compose_stores() -> None:
    local = json.loads((ROOT / "infra" / "sam-local-env.json").read_text())["Parameters"]
    app_env = _compose()["services"]["api"]["environment"]
    compose_db = app_env["AJS_DATABASE_URL"].replace("${POSTGRES_PASSWORD:-postgres}",
                                                     "postgres")
    assert local["AJS_DATABASE_URL"] == compose_db
    assert local["AJS_REDIS_URL"] == app_env["AJS_REDIS_URL"]
    # Declared in the template, or `sam local` would ignore the override.
    declared = set(_template()["Globals"]["Function"]["Environment"]["Variables"])
    assert set(local) <= declared, set(local) - declared


def test_deploy_doc_covers_every_parameter_and_the_export_command() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for name in _template()["Parameters"]:
        assert f"`{name}`" in doc, f"docs/deploy.md does not describe {name}"
    header = (ROOT / "requirements.txt").read_text().splitlines()[1].lstrip("# ")
    documented = re.search(r"```bash\n(uv export .*?)\n```", doc, re.S)
    assert documented and " ".join(documented.group(1).replace("\\\n", " ").split()) == header
