"""Delivering one webhook: guard, sign, send, and classify the answer.

The connection goes to the address the SSRF guard checked, with the URL's host name kept
in the ``Host`` header and in TLS (SNI and certificate check), so a DNS answer that
changes between the check and the connect (rebinding) cannot redirect it. Each delivery
gets its own connection: pooled connections are keyed by address, and two host names on
one address must not share a TLS session. The TLS context (costly to build: it loads the
CA bundle) is made once per worker. Redirects are not followed: the guard has not seen
where they lead.

``timeout`` is a deadline for the whole delivery: httpx's timeouts apply to each network
operation, so a receiver sending one byte a second would never trip them and would hold
the worker's slot until the job's own timeout (up to a day). Errors and results name the
URL without its user info, and keep the answer's body only when the payload asks.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx

from shared.job_types.webhook import sealing, ssrf
from shared.job_types.webhook import signing as webhook_signing
from shared.registry import JobContext, PermanentError, RetryableError

if TYPE_CHECKING:
    from shared.job_types.webhook import WebhookPayload

USER_AGENT = "async-job-scheduler-webhooks/1"


def _tls(ctx: JobContext) -> ssl.SSLContext:
    tls = ctx.resources.get("webhook.tls")
    if not isinstance(tls, ssl.SSLContext):
        tls = ctx.resources["webhook.tls"] = ssl.create_default_context()
    return tls


def encode_body(payload: WebhookPayload) -> tuple[bytes, str]:
    if isinstance(payload.body, str):
        return payload.body.encode(), "text/plain; charset=utf-8"
    text = json.dumps(payload.body, separators=(",", ":"), ensure_ascii=False)
    return text.encode(), "application/json"


def retry_after(value: str | None, ceiling: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), ceiling)


async def deliver(payload: WebhookPayload, ctx: JobContext) -> dict[str, Any]:
    s = ctx.settings
    if not s.webhook_secret:
        raise PermanentError("AJS_WEBHOOK_SECRET is not set: deliveries must be signed")
    try:
        key = webhook_signing.decode_secret(s.webhook_secret)
    except ValueError as exc:
        raise PermanentError(f"AJS_WEBHOOK_SECRET: {exc}") from exc

    shown = sealing.without_userinfo(str(payload.url))
    timeout = payload.timeout or s.webhook_timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            address, response, head = await _send(payload, ctx, key, shown, timeout)
    except TimeoutError:
        raise RetryableError(f"{shown}: no complete answer within {timeout:g} s (the "
                             "delivery's deadline)") from None

    status = response.status_code
    text = bytes(head).decode("utf-8", errors="replace")
    result: dict[str, Any] = {"status_code": status, "url": shown, "address": address,
                              "webhook_id": f"msg_{ctx.job_id}", "attempt": ctx.attempt}
    if payload.response_bytes:
        result["response"] = text
    if 200 <= status < 300:
        return result
    said = f"{shown} answered {status}" + (f": {text[:200]}" if text else "")
    if status in (408, 429) or status >= 500:
        raise RetryableError(said, retry_after=retry_after(
            response.headers.get("retry-after"), s.webhook_retry_after_max))
    if 300 <= status < 400:
        location = sealing.without_userinfo(response.headers.get("location") or "")
        raise PermanentError(f"{shown} answered {status} (redirects are not followed; "
                             f"Location: {location})")
    raise PermanentError(said)


async def _send(payload: WebhookPayload, ctx: JobContext, key: bytes, shown: str,
                per_operation: float) -> tuple[str, httpx.Response, bytearray]:
    """Resolve, check, connect, send and read up to ``response_bytes`` of the answer."""
    url = httpx.URL(str(payload.url))
    try:
        address = await ssrf.resolve(url.host, url.port or (443 if url.scheme == "https"
                                                             else 80),
                                     ctx.settings.webhook_allowlist)
    except ssrf.Refused as exc:
        raise PermanentError(str(exc)) from exc
    except ssrf.Unresolvable as exc:
        raise RetryableError(str(exc)) from exc

    body, content_type = encode_body(payload)
    msg_id = f"msg_{ctx.job_id}"  # the same on every attempt: receivers deduplicate on it
    headers = {"content-type": content_type, "user-agent": USER_AGENT, **payload.headers,
               **webhook_signing.headers(key, msg_id, int(time.time()), body),
               "host": url.netloc.decode("ascii").rpartition("@")[2]}
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    target = url.copy_with(host=address)
    keep = payload.response_bytes

    async with httpx.AsyncClient(verify=_tls(ctx), trust_env=False, follow_redirects=False,
                                 timeout=per_operation) as client:
        try:
            request = client.build_request(payload.method, target, content=body,
                                           headers=headers, extensions=extensions)
            response = await client.send(request, stream=True)
            head = bytearray()
            try:
                if keep:
                    async for chunk in response.aiter_bytes():
                        head += chunk
                        if len(head) >= keep:
                            break
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise RetryableError(f"{shown}: no answer within {per_operation:g} s "
                                 f"({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            # httpx's message could quote the URL: with user info in it, name the kind only
            said = "" if sealing.has_userinfo(str(payload.url)) else f": {exc}"
            raise RetryableError(f"{shown}: {type(exc).__name__}{said}") from exc
    return address, response, head[:keep]
