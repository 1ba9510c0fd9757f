"""The worker's HTTP endpoints: ``/metrics``, ``/healthz`` (alive) and ``/readyz``
(connected and claiming), for container health checks and direct scraping.

A web framework would cost the worker more memory than everything else it imports for
three fixed answers, so this is asyncio's own server and prometheus_client's own
exposition: one request per connection, GET only, the answer closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

MAX_HEAD = 8192  # bytes of request line and headers we are willing to read
READ_TIMEOUT = 5.0
REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class Probes:
    def __init__(self, host: str, port: int, collector: Collector,
                 ready: Callable[[], bool], alive: Callable[[], bool] = lambda: True) -> None:
        self.host = host
        self.port = port
        self.collector = collector
        self.ready = ready
        self.alive = alive
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; returns the port (useful when asked for port 0)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  limit=MAX_HEAD)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def answer(self, method: str, path: str, accept: str) -> tuple[int, str, bytes]:
        """Status, content type and body for one request."""
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"GET only\n"
        if path == "/metrics":
            encoder, content_type = choose_encoder(accept)
            return 200, content_type, encoder(self.collector)
        if path == "/healthz":
            ok = self.alive()
            return (200 if ok else 503), "text/plain", b"ok\n" if ok else b"not alive\n"
        if path == "/readyz":
            ok = self.ready()
            return (200 if ok else 503), "text/plain", b"ready\n" if ok else b"not ready\n"
        return 404, "text/plain", b"not found\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            accept = ""
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "accept":
                    accept = value.strip()
            status, content_type, body = self.answer(method, target.split("?", 1)[0], accept)
            writer.write(
                f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1"))
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass  # a half-open, slow or malformed client gets nothing
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
