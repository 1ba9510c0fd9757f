"""``python -m bench.serve_api FD``: the real API app under uvicorn, on a socket the
parent already bound (127.0.0.1, port 0), so no other process can take the port between
choosing it and listening.

Why not ``uvicorn --fd``: uvicorn wraps that descriptor as an AF_UNIX socket, so asyncio
never sets TCP_NODELAY on the accepted TCP connections, and every keep-alive request then
waits about 40 ms for a delayed ACK (Nagle). ``socket.socket(fileno=...)`` reads the real
family from the descriptor.
"""

from __future__ import annotations

import socket
import sys

import uvicorn


def main(argv: list[str]) -> None:
    sock = socket.socket(fileno=int(argv[0]))
    config = uvicorn.Config("functions.api.app:serve", factory=True,
                            log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
