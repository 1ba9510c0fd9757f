"""Invoke a Lambda handler the way the runtime does, in a fresh process:
``python -m tests.support.invoke module:function event.json [event.json ...]``
prints one JSON result line per event (several events: warm invocations)."""

from __future__ import annotations

import importlib
import json
import sys
import uuid
from dataclasses import dataclass, field


@dataclass
class LambdaContext:
    """The attributes the Lambda runtime's context object carries."""

    function_name: str = "local"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:local"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/local"
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def main(argv: list[str]) -> None:
    module_name, _, func_name = argv[0].partition(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    for path in argv[1:]:
        with open(path) as f:
            event = json.load(f)
        result = handler(event, LambdaContext())
        print("RESULT " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
