"""Structured JSON logs (aws-lambda-powertools Logger) for the functions and the worker.

Every line about a job carries job_id, job_type and attempt: :class:`JobLog` adds them to
each call instead of appending keys to the shared logger, which concurrent jobs would
overwrite.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger


def get_logger(service: str) -> Logger:
    return Logger(service=service, level=os.environ.get("AJS_LOG_LEVEL", "INFO"))


class JobLog:
    """A logger bound to one attempt of one job."""

    def __init__(self, logger: Logger, job_id: str, job_type: str, attempt: int) -> None:
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
