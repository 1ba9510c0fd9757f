"""``python -m functions.scheduler [--every SECONDS]``: the scheduler function without AWS.

Builds an EventBridge ``Scheduled Event`` like the one AWS delivers and calls the Lambda
handler with it, once or every SECONDS, so the local stack (and docker compose) run the
same code path as the deployed function.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import uuid
from datetime import UTC, datetime
from types import FrameType, SimpleNamespace
from typing import Any


def scheduled_event(rule: str = "local-ticker") -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "000000000000",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "local",
        "resources": [f"arn:aws:events:local:000000000000:rule/{rule}"],
        "detail": {},
    }


def lambda_context() -> Any:
    return SimpleNamespace(
        function_name="scheduler-local", function_version="$LATEST", memory_limit_in_mb=256,
        invoked_function_arn="arn:aws:lambda:local:000000000000:function:scheduler-local",
        aws_request_id=str(uuid.uuid4()), log_group_name="local", log_stream_name="local",
        get_remaining_time_in_millis=lambda: 60_000)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m functions.scheduler", description=__doc__)
    parser.add_argument("--every", type=float, default=0.0,
                        help="repeat every SECONDS (default: run one tick and exit)")
    args = parser.parse_args(argv)
    if args.every:  # the tick lock lives two ticks: tell it how often we tick
        os.environ.setdefault("AJS_SCHEDULER_TICK_SECONDS", str(args.every))

    from functions.scheduler.handler import handler, logger

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.is_set():
        try:
            handler(scheduled_event(), lambda_context())
        except Exception:  # a failed tick is logged; the next one tries again
            logger.exception("scheduler tick failed")
            if not args.every:
                raise
        if not args.every:
            return
        stop.wait(args.every)


if __name__ == "__main__":
    main()
