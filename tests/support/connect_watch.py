"""Watch (and stop) the process's outgoing connections to given addresses.

Python raises the ``socket.connect`` audit event for every connect, blocking or not
(asyncio's included), before anything is sent. The hook here records attempts to the
watched addresses and refuses them, so a test can prove "no connection was attempted"
for addresses that must never see our traffic (10.x, the metadata address), where no
listener of ours can count accepts.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_watched: set[str] = set()
_attempts: list[Any] = []
_installed = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event != "socket.connect" or not _watched:
        return
    address = args[1]
    if isinstance(address, tuple) and str(address[0]) in _watched:
        _attempts.append(address)
        raise ConnectionRefusedError(f"test watch: connect to {address[0]} blocked")


@contextmanager
def watch_connects(*hosts: str) -> Iterator[list[Any]]:
    """Yield the list of attempted connects to ``hosts`` (it should stay empty)."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)  # cannot be removed: it idles when nothing is watched
        _installed = True
    _watched.update(hosts)
    _attempts.clear()
    try:
        yield _attempts
    finally:
        _watched.clear()
