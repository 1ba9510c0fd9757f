"""Checks of template.yaml that need no AWS account and no Docker, run with the SAM CLI's
own interpreter by .ci/sam-check.sh (``sam validate --lint`` runs first):

1. The AWS::Serverless transform, as CloudFormation runs it at deploy time, succeeds for
   both authorizer modes. ``sam validate`` alone is not enough: it resolved an ``!If`` in
   ``Auth.DefaultAuthorizer`` that the real transform refuses.
2. With the conditions resolved, the HTTP API's OpenAPI body asks for SigV4 (or the JWT
   authorizer with our issuer and audience) on every route except the unsigned health
   check; the tick rule has its retry policy and dead letter queue; the ECS container's
   stop timeout outlasts the workers' drain.
3. ``sam local start-api`` would mount the routes: SAM CLI's own route discovery (the part
   of start-api that needs no Docker) finds both on the API function (in JWT mode only
   with ``--disable-authorizer``, as docs/deploy.md says), and with samconfig.toml's
   env_vars file the functions would reach the compose stack's services by name.
4. Every key in samconfig.toml is an option of the command its section configures (the
   SAM CLI silently ignores a misspelt one).
"""

from __future__ import annotations

import copy
import importlib
import json
import sys
import tomllib
from typing import Any

from samcli.lib.providers.api_provider import ApiProvider
from samcli.lib.providers.sam_function_provider import SamFunctionProvider
from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider
from samcli.local.lambdafn.env_vars import EnvironmentVariables
from samcli.yamlhelper import yaml_parse
from samtranslator.translator.transform import transform

TEMPLATE = sys.argv[1] if len(sys.argv) > 1 else "template.yaml"
BASE = {"WorkerImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/ajs-worker:1",
        "SubnetIds": "subnet-0123456789abcdef0", "SecurityGroupIds": "sg-0123456789abcdef0",
        "DatabaseUrlSecretArn":
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:ajs/db-AbCdEf",
        "RedisUrlParameterName": "/ajs/redis-url"}
# The console's public paths (functions/api/console/pages.py); nothing else under
# /api/v1/console may skip the authorizer.
CONSOLE_SHELLS = {"/api/v1/console", "/api/v1/console/sign-in", "/api/v1/console/jobs",
                  "/api/v1/console/jobs/{job_id}", "/api/v1/console/dead-letters",
                  "/api/v1/console/schedules", "/api/v1/console/assets/{name}"}
MODES = {
    "AWS_IAM": {},
    "JWT": {"AuthorizationType": "JWT", "JwtIssuer": "https://issuer.example.com/",
            "JwtAudience": "client-a,client-b"},
}


class _NoManagedPolicies:
    def load(self) -> dict[str, str]:
        return {}


def packaged(template: dict[str, Any]) -> dict[str, Any]:
    """The template as ``sam package`` hands it over: code in S3, not a local path."""
    out = copy.deepcopy(template)
    out["Globals"]["Function"]["CodeUri"] = "s3://bucket/code.zip"
    return out


def parameters(template: dict[str, Any], given: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, spec in template["Parameters"].items():
        value = given.get(name, spec.get("Default"))
        if value is not None and spec["Type"].startswith(("List<", "CommaDelimitedList")):
            value = [part for part in str(value).split(",")]
        values[name] = value
    return values


def resolve(node: Any, params: dict[str, Any], conditions: dict[str, Any]) -> Any:
    """Fn::If, Ref to parameters, and the condition functions our template uses."""
    if isinstance(node, list):
        return [resolve(n, params, conditions) for n in node if n != {"Ref": "AWS::NoValue"}]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (key, arg), = node.items()
        if key == "Ref" and arg in params:
            return params[arg]
        if key == "Fn::If":
            name, yes, no = arg
            return resolve(yes if truth(name, params, conditions) else no, params, conditions)
    return {k: resolve(v, params, conditions) for k, v in node.items()}


def truth(name: str, params: dict[str, Any], conditions: dict[str, Any]) -> bool:
    return bool(evaluate(conditions[name], params, conditions))


def evaluate(expr: Any, params: dict[str, Any], conditions: dict[str, Any]) -> Any:
    if isinstance(expr, dict):
        (key, arg), = expr.items()
        if key == "Ref":
            return params[arg]
        if key == "Condition":
            return truth(arg, params, conditions)
        if key == "Fn::Equals":
            a, b = (evaluate(x, params, conditions) for x in arg)
            return a == b
        if key == "Fn::Not":
            return not evaluate(arg[0], params, conditions)
        if key == "Fn::Or":
            return any(evaluate(x, params, conditions) for x in arg)
        if key == "Fn::And":
            return all(evaluate(x, params, conditions) for x in arg)
        raise ValueError(f"unsupported condition function {key}")
    return expr


def check_mode(source: dict[str, Any], mode: str, given: dict[str, str]) -> None:
    params = parameters(source, {**BASE, **given})
    out = transform(packaged(source), params, _NoManagedPolicies())
    resources = out["Resources"]
    conditions = out.get("Conditions", {})

    body = resolve(resources["HttpApi"]["Properties"]["Body"], params, conditions)
    proxy = body["paths"]["/{proxy+}"]["x-amazon-apigateway-any-method"]
    health = body["paths"]["/api/v1/health"]["get"]
    schemes = body["components"]["securitySchemes"]
    assert health["security"] == [], health
    # The console's shell pages and assets are open (no data); its fragments are not.
    console = {path: ops["get"] for path, ops in body["paths"].items()
               if path.startswith("/api/v1/console")}
    assert set(console) == CONSOLE_SHELLS, sorted(console)
    for path, op in console.items():
        assert op["security"] == [] and "x-amazon-apigateway-integration" in op, path
    assert "x-amazon-apigateway-integration" in proxy and "x-amazon-apigateway-integration" \
        in health, "SAM did not attach the Lambda integration"
    if mode == "JWT":
        assert proxy["security"] == [{"jwt": []}], proxy["security"]
        jwt = schemes["jwt"]["x-amazon-apigateway-authorizer"]
        assert jwt["jwtConfiguration"] == {"issuer": given["JwtIssuer"],
                                           "audience": ["client-a", "client-b"]}, jwt
        assert set(schemes) == {"jwt"}
    else:
        assert proxy["security"] == [{"sigv4": []}], proxy["security"]
        assert schemes["sigv4"]["x-amazon-apigateway-authtype"] == "awsSigv4"
        assert set(schemes) == {"sigv4"}

    stage = resources["HttpApiApiGatewayDefaultStage"]["Properties"]
    assert stage["AccessLogSettings"]["DestinationArn"], stage
    assert stage["DefaultRouteSettings"]["ThrottlingRateLimit"], stage

    [rule] = [r for r in resources.values() if r["Type"] == "AWS::Events::Rule"]
    [target] = rule["Properties"]["Targets"]
    assert rule["Properties"]["ScheduleExpression"] == "rate(1 minute)"
    assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 1 and target["DeadLetterConfig"]

    container = resources["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    grace = int(params["WorkerShutdownGraceSeconds"])
    stop = int(params["WorkerStopTimeout"])
    assert grace + 10 <= stop <= 120, (grace, stop)
    assert container["HealthCheck"]["Command"][0] == "CMD"

    for name in ("ApiFunction", "SchedulerFunction"):
        env = resources[name]["Properties"]["Environment"]["Variables"]
        for var in ("AJS_DATABASE_URL_SECRET_ARN", "AJS_REDIS_URL_PARAMETER"):
            assert var in env, (name, var)
        assert not any("password" in str(v).lower() for v in env.values()), env
    print(f"transform ok ({mode}): {len(resources)} resources")


def check_routes(mode: str, given: dict[str, str]) -> None:
    stacks, _ = SamLocalStackProvider.get_stacks(TEMPLATE,
                                                 parameter_overrides={**BASE, **given})
    # SAM CLI mistakes an HTTP API's JWT authorizer in an OpenAPI body for a Lambda
    # authorizer and stops; --disable-authorizer (local runs check no auth anyway) skips it.
    routes = {(r.path, tuple(sorted(r.methods)), r.function_name)
              for r in ApiProvider(stacks, disable_authorizer=mode == "JWT").routes}
    any_method = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
    assert ("/{proxy+}", any_method, "ApiFunction") in routes, routes
    assert ("/api/v1/health", ("GET",), "ApiFunction") in routes, routes
    for path in CONSOLE_SHELLS:
        assert (path, ("GET",), "ApiFunction") in routes, (path, routes)
    print(f"sam local start-api routes ok ({mode}): {sorted(r[0] for r in routes)}")


COMMANDS = {
    "validate": "samcli.commands.validate.validate",
    "build": "samcli.commands.build.command",
    "deploy": "samcli.commands.deploy.command",
    "local_start_api": "samcli.commands.local.start_api.cli",
    "local_invoke": "samcli.commands.local.invoke.cli",
}


def check_samconfig(path: str = "samconfig.toml") -> dict[str, Any]:
    with open(path, "rb") as f:
        config = tomllib.load(f)
    options = {name: {str(p.name) for p in importlib.import_module(module).cli.params}
               for name, module in COMMANDS.items()}
    everything = set().union(*options.values())
    for env, sections in config.items():
        if env == "version":
            continue
        for command, section in sections.items():
            known = everything if command == "global" else options[command]
            unknown = set(section["parameters"]) - known
            assert not unknown, f"samconfig.toml [{env}.{command}]: unknown {unknown}"
    print(f"samconfig.toml ok: {[e for e in config if e != 'version']}")
    return config


def check_local_environment(config: dict[str, Any]) -> None:
    """What the API function's container would get from `sam local start-api`."""
    local = config["default"]["local_start_api"]["parameters"]
    with open(local["env_vars"]) as f:
        overrides = json.load(f)["Parameters"]
    stacks, _ = SamLocalStackProvider.get_stacks(TEMPLATE, parameter_overrides=BASE)
    function = SamFunctionProvider(stacks).get("ApiFunction")
    assert function is not None and function.environment is not None
    env = EnvironmentVariables(function.name, function.memory, function.timeout,
                               function.handler,
                               variables=function.environment["Variables"],
                               override_values=overrides).resolve()
    assert env["AJS_DATABASE_URL"].split("@")[1].startswith("postgres:5432/"), env
    assert env["AJS_REDIS_URL"] == "redis://redis:6379/0", env
    assert env["AJS_DATABASE_URL_SECRET_ARN"] == env["AJS_REDIS_URL_PARAMETER"] == ""
    assert local["docker_network"] == "ajs"
    print("sam local environment ok: the compose stack's postgres and redis, no secrets")


def main() -> None:
    with open(TEMPLATE) as f:
        source = yaml_parse(f.read())
    for mode, given in MODES.items():
        check_mode(source, mode, given)
        check_routes(mode, given)
    check_local_environment(check_samconfig())


if __name__ == "__main__":
    main()
