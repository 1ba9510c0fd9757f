"""Refuse what a browser on another site could make a user's session send, and unknown hosts.

A ``<form>`` can POST ``application/x-www-form-urlencoded``, ``multipart/form-data`` or
``text/plain`` to any site without a CORS preflight, and ``fetch(..., {mode: "no-cors"})``
can send a body-less POST. The rule, for every state-changing method (POST, PUT, PATCH,
DELETE):

- a request that names a Content-Type must name ``application/json`` (415 otherwise), and
  one with a body must name it (a body without a type is 415 too);
- a request a browser marks as coming from another site is 403, whether or not it has a
  body: ``Sec-Fetch-Site`` other than ``same-origin`` or ``none``; or, from a browser too old
  to send that, an ``Origin`` whose host is neither the ``Host`` header nor an allowed host.

Non-browser clients send neither header and are unaffected. A cross-site request with
``application/json`` needs a CORS preflight, which this API never grants.

With ``api_allowed_hosts`` set, a ``Host`` header outside the list is 400 (DNS rebinding,
poisoned absolute URLs); each entry is a host name, ``*.domain`` for its subdomains, or ``*``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON = "application/json"
SAME_SITE_FETCH = frozenset({"same-origin", "none"})


def _host_name(host: str) -> str:
    """``Host`` without its port (IPv6 literals keep their brackets)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host: str, allowed: list[str]) -> bool:
    name = _host_name(host)
    for entry in allowed:
        entry = entry.strip().lower()
        if entry == "*" or entry == name:
            return True
        if entry.startswith("*.") and name.endswith(entry[1:]):
            return True
    return False


class RequestGuard:
    """ASGI middleware applying the rules above before any route runs."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope["method"], Headers(scope=scope))
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, code, message, loc = refusal
        body = json.dumps({"error": {"code": code, "message": message, "details": [
            {"loc": loc, "msg": message, "type": code}]}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _same_origin(self, origin: str, host: str) -> bool:
        origin_host = urlsplit(origin).netloc.lower()
        if not origin_host:  # "null": a sandboxed or privacy-sensitive context
            return False
        if origin_host == host.strip().lower():
            return True
        return bool(self.allowed_hosts) and host_allowed(origin_host, self.allowed_hosts)

    def refusal(self, method: str, headers: Headers) -> tuple[int, str, str, list[Any]] | None:
        host = headers.get("host", "")
        if self.allowed_hosts and not host_allowed(host, self.allowed_hosts):
            return 400, "bad_request", "this Host is not served here", ["header", "Host"]
        if method not in STATE_CHANGING:
            return None
        fetch_site = headers.get("sec-fetch-site")
        origin = headers.get("origin")
        if fetch_site is not None:
            # Set by the browser itself (a page cannot forge it), and unlike Origin it is
            # not fooled by a proxy that rewrites Host: when present, it decides.
            if fetch_site.lower() not in SAME_SITE_FETCH:
                return (403, "cross_site_refused", "state-changing requests from another "
                        "site are refused", ["header", "Sec-Fetch-Site"])
        elif origin is not None and not self._same_origin(origin, host):
            return (403, "cross_site_refused", "state-changing requests from another origin "
                    "are refused", ["header", "Origin"])
        content_type = headers.get("content-type")
        has_body = (headers.get("content-length", "0").strip() not in ("", "0")
                    or "transfer-encoding" in headers)
        if content_type is not None:
            if content_type.split(";", 1)[0].strip().lower() != JSON:
                return (415, "unsupported_media_type", f"request bodies must be {JSON}",
                        ["header", "Content-Type"])
        elif has_body:
            return (415, "unsupported_media_type", f"a request body needs Content-Type: "
                    f"{JSON}", ["header", "Content-Type"])
        return None
