"""A real HTTP server on 127.0.0.1 that records every connection and request it gets.

Answers are scripted per request (status, headers, body, delay, trickle), so a test can
make a receiver fail, throttle, stall, or send its answer one byte at a time.
``accepted`` counts TCP connections: a test proves that a refused target was never
contacted by asserting it stayed at zero.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import socket
from typing import Any


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0
    trickle: float = 0.0  # > 0: the whole answer, status line first, a byte every this many s


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket, Any]:
        conn = super().get_request()
        with self.receiver.lock:
            self.receiver.accepted += 1
        return conn

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up before the answer is over (it had read enough, or gave
        # up on a trickle) is a normal event here, not a failure worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        r = self.server.receiver
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        with r.lock:
            r.requests.append(Request(self.command, self.path,
                                      {k.lower(): v for k, v in self.headers.items()},
                                      body, time.time()))
            answer = r.answers.pop(0) if r.answers else r.default
        if answer.delay:
            time.sleep(answer.delay)
        if answer.trickle:
            self._trickle(answer)
            return
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    def _trickle(self, answer: Answer) -> None:
        self.close_connection = True
        head = "".join(f"{k}: {v}\r\n" for k, v in answer.headers.items())
        raw = (f"HTTP/1.1 {answer.status} X\r\n{head}content-length: {len(answer.body)}\r\n"
               "\r\n").encode() + answer.body
        for i in range(len(raw)):
            if self.server.receiver.closed:
                return
            self.wfile.write(raw[i:i + 1])
            self.wfile.flush()
            time.sleep(answer.trickle)
        with self.server.receiver.lock:
            self.server.receiver.trickled += 1

    do_POST = do_PUT = do_GET = _handle


class Receiver:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted = 0
        self.requests: list[Request] = []
        self.answers: list[Answer] = []
        self.default = Answer()
        self.trickled = 0  # trickled answers sent to the end (the client read them all)
        self.closed = False
        self.server = _Server(self)
        self.port = int(self.server.server_address[1])

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@contextmanager
def http_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True,
                              kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield receiver
    finally:
        receiver.closed = True
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join(5)
