"""Invoke a handler from a ``sam build`` artifact directory in a process that sees nothing
else, the way Lambda would load it:

    python -I -S tests/support/built_invoke.py ARTIFACT_DIR module.function EVENT.json...

``-I`` ignores PYTHON* variables and the user site and keeps this script's directory off
``sys.path``; ``-S`` drops site-packages. What remains is the standard library and the
artifact directory, so a module missing from the package fails the import here as it
would in Lambda. Prints ``RESULT <json>`` per event (several events: warm invocations in
one process) and, last, ``FOREIGN <json>``: loaded modules from anywhere else (expected:
none).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import sysconfig
import uuid
from typing import Any


class LambdaContext:
    """The attributes of the runtime's context object that handlers and powertools read."""

    function_name = "built"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:built"
    log_group_name = "/aws/lambda/built"
    log_stream_name = "built"

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def foreign_modules(artifact: str) -> dict[str, str]:
    """Loaded modules whose file is neither in the artifact nor in the standard library."""
    allowed = [os.path.realpath(artifact)]
    allowed += [os.path.realpath(p) for key, p in sysconfig.get_paths().items()
                if key in ("stdlib", "platstdlib")]
    out: dict[str, str] = {}
    for name, module in list(sys.modules.items()):
        if name == "__main__":
            continue
        path = getattr(module, "__file__", None)
        if path and not any(os.path.realpath(path).startswith(a + os.sep) for a in allowed):
            out[name] = path
    return out


def main(argv: list[str]) -> int:
    artifact, handler_path, *events = argv
    if any("site-packages" in p for p in sys.path):
        print("run me with python -I -S", file=sys.stderr)
        return 2
    sys.path.insert(0, artifact)
    module_name, _, attr = handler_path.rpartition(".")
    handler = getattr(importlib.import_module(module_name), attr)
    for path in events:
        with open(path) as f:
            event: Any = json.load(f)
        print("RESULT " + json.dumps(handler(event, LambdaContext()), default=str), flush=True)
    print("FOREIGN " + json.dumps(foreign_modules(artifact)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
