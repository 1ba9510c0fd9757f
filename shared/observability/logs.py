"""Structured JSON logs, one object per line, for the functions and the worker.

On Lambda the loggers are aws-lambda-powertools' ``Logger`` (the handlers inject the Lambda
context into every line). Everywhere else (the worker, the API under uvicorn, the tick's
loop) they are the standard library's, with :class:`JsonLines` writing the same keys
(level, location, message, timestamp, service, then the ``extra`` keys): importing
powertools costs a worker about 1 MB of its resident memory (it drags in jmespath and
botocore's package) for nothing it uses.

Every line about a job carries job_id, job_type and attempt: :class:`JobLog` adds them to
each call instead of appending keys to the shared logger, which concurrent jobs would
overwrite.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger


class StructuredLogger(Protocol):
    """What our code calls on a logger: powertools' ``Logger`` and ``logging.Logger`` both."""

    def debug(self, msg: object, *args: object, exc_info: Any = ..., stack_info: bool = ...,
              stacklevel: int = ..., extra: Mapping[str, object] | None = ...) -> None: ...
    def info(self, msg: object, *args: object, exc_info: Any = ..., stack_info: bool = ...,
             stacklevel: int = ..., extra: Mapping[str, object] | None = ...) -> None: ...
    def warning(self, msg: object, *args: object, exc_info: Any = ..., stack_info: bool = ...,
                stacklevel: int = ..., extra: Mapping[str, object] | None = ...) -> None: ...
    def error(self, msg: object, *args: object, exc_info: Any = ..., stack_info: bool = ...,
              stacklevel: int = ..., extra: Mapping[str, object] | None = ...) -> None: ...
    def exception(self, msg: object, *args: object, exc_info: Any = ...,
                  stack_info: bool = ..., stacklevel: int = ...,
                  extra: Mapping[str, object] | None = ...) -> None: ...


# Attributes every LogRecord has: anything else on a record came from ``extra``.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class JsonLines(logging.Formatter):
    """One JSON object per record, with powertools' keys, so a log pipeline sees one shape
    whichever process wrote the line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "level": record.levelname,
            "location": f"{record.funcName}:{record.lineno}",
            "message": record.getMessage(),
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "service": self.service,
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _RECORD_FIELDS)
        if record.exc_info:
            line["exception_name"] = record.exc_info[0].__name__ if record.exc_info[0] else ""
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def on_lambda() -> bool:
    return "AWS_LAMBDA_FUNCTION_NAME" in os.environ


def lambda_logger(service: str) -> Logger:
    """powertools' Logger, for a handler that injects the Lambda context into its lines."""
    from aws_lambda_powertools import Logger

    return Logger(service=service, level=os.environ.get("AJS_LOG_LEVEL", "INFO"))


def get_logger(service: str) -> StructuredLogger:
    if on_lambda():
        return lambda_logger(service)
    # Named apart from powertools' own logger for the service (named after it), so a
    # handler's powertools Logger built outside Lambda (in tests) does not print twice.
    logger = logging.getLogger(f"ajs.{service}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonLines(service))
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(os.environ.get("AJS_LOG_LEVEL", "INFO").upper())
    return logger


class JobLog:
    """A logger bound to one attempt of one job."""

    def __init__(self, logger: StructuredLogger, job_id: str, job_type: str,
                 attempt: int) -> None:
        self._logger = logger
        self._keys = {"job_id": job_id, "job_type": job_type, "attempt": attempt}

    def _extra(self, extra: dict[str, Any] | None) -> dict[str, Any]:
        return {**self._keys, **(extra or {})}

    def debug(self, msg: str, *args: Any, extra: dict[str, Any] | None = None) -> None:
        self._logger.debug(msg, *args, extra=self._extra(extra), stacklevel=2)

    def info(self, msg: str, *args: Any, extra: dict[str, Any] | None = None) -> None:
        self._logger.info(msg, *args, extra=self._extra(extra), stacklevel=2)

    def warning(self, msg: str, *args: Any, extra: dict[str, Any] | None = None) -> None:
        self._logger.warning(msg, *args, extra=self._extra(extra), stacklevel=2)

    def error(self, msg: str, *args: Any, extra: dict[str, Any] | None = None,
              exc_info: bool = False) -> None:
        self._logger.error(msg, *args, extra=self._extra(extra), exc_info=exc_info,
                           stacklevel=2)
