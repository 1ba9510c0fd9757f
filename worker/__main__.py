"""``python -m worker``: run one worker process until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal

from shared.registry import load
from shared.secret_settings import resolve_secrets
from shared.settings import Settings
from worker.pool import Worker
from worker.reporting import reporting


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--concurrency", type=int, help="jobs at once (AJS_WORKER_CONCURRENCY)")
    parser.add_argument("--queue", help="queue to drain (AJS_QUEUE)")
    return parser.parse_args(argv)


async def serve(settings: Settings) -> None:
    worker = Worker(settings, load(settings.job_modules))
    # What is alive now (modules, the registry: most of the process's objects) lives as
    # long as the process: frozen out of the garbage collector's sight, so that a full
    # collection, which walks every tracked object, does not pause a running job for
    # milliseconds (measured in bench/RESULTS.md, issue 12).
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    async with reporting(settings, worker):
        await worker.run()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {k: v for k, v in {"worker_concurrency": args.concurrency,
                                   "queue": args.queue}.items() if v is not None}
    settings = resolve_secrets(Settings(**overrides))
    # uvloop: the worker's hot path is event-loop and socket overhead (a third less CPU
    # per job than asyncio's default loop in bench/); asyncio's loop where it is missing.
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
