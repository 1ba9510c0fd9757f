"""Delivering one webhook: guard, sign, send, and classify the answer.

The connection goes to the address the SSRF guard checked, with the URL's host name kept
in the ``Host`` header and in TLS (SNI and certificate check), so a DNS answer that
changes between the check and the connect (rebinding) cannot redirect it. Each delivery
gets its own connection: pooled connections are keyed by address, and two host names on
one address must not share a TLS session. The TLS context (costly to build: it loads the
CA bundle) is made once per worker. Redirects are not followed: the guard has not seen
where they lead.
"""

from __future__ import annotations

import json
import ssl
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx

from shared.job_types.webhook import signing as webhook_signing
from shared.job_types.webhook import ssrf
from shared.registry import JobContext, PermanentError, RetryableError

if TYPE_CHECKING:
    from shared.job_types.webhook import WebhookPayload

KEEP = 1024  # bytes of the response kept in the result
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

    url = httpx.URL(str(payload.url))
    try:
        address = await ssrf.resolve(url.host, url.port or (443 if url.scheme == "https"
                                                             else 80), s.webhook_allowlist)
    except ssrf.Refused as exc:
        raise PermanentError(str(exc)) from exc
    except ssrf.Unresolvable as exc:
        raise RetryableError(str(exc)) from exc

    body, content_type = encode_body(payload)
    msg_id = f"msg_{ctx.job_id}"  # the same on every attempt: receivers deduplicate on it
    headers = {"content-type": content_type, "user-agent": USER_AGENT, **payload.headers,
               **webhook_signing.headers(key, msg_id, int(time.time()), body),
               "host": url.netloc.decode("ascii")}
    timeout = payload.timeout or s.webhook_timeout_seconds
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    target = url.copy_with(host=address)

    async with httpx.AsyncClient(verify=_tls(ctx), trust_env=False, follow_redirects=False,
                                 timeout=timeout) as client:
        try:
            request = client.build_request(payload.method, target, content=body,
                                           headers=headers, extensions=extensions)
            response = await client.send(request, stream=True)
            try:
                head = bytearray()
                async for chunk in response.aiter_bytes():
                    head += chunk
                    if len(head) >= KEEP:
                        break
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise RetryableError(f"{payload.url}: no answer within {timeout:g} s "
                                 f"({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise RetryableError(f"{payload.url}: {type(exc).__name__}: {exc}") from exc

    status = response.status_code
    text = bytes(head[:KEEP]).decode("utf-8", errors="replace")
    result = {"status_code": status, "response": text, "url": str(payload.url),
              "address": address, "webhook_id": msg_id, "attempt": ctx.attempt}
    if 200 <= status < 300:
        return result
    said = f"{payload.url} answered {status}: {text[:200]}"
    if status in (408, 429) or status >= 500:
        raise RetryableError(said, retry_after=retry_after(
            response.headers.get("retry-after"), s.webhook_retry_after_max))
    if 300 <= status < 400:
        raise PermanentError(f"{payload.url} answered {status} (redirects are not followed; "
                             f"Location: {response.headers.get('location')})")
    raise PermanentError(said)
