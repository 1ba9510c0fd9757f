"""Signing webhook deliveries the Standard Webhooks way (https://www.standardwebhooks.com).

Each delivery carries ``webhook-id`` (stable across retries, so a receiver can drop
duplicates), ``webhook-timestamp`` (seconds, so a receiver can refuse replays) and
``webhook-signature``: ``v1,`` + base64(HMAC-SHA256(key, "id.timestamp.body")). The
secret is written ``whsec_`` + base64(key), as the specification's libraries expect.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

PREFIX = "whsec_"


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_...`` secret (a bare base64 key is accepted too)."""
    text = secret.removeprefix(PREFIX)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("webhook secret must be 'whsec_' followed by base64") from exc
    if len(key) < 16:
        raise ValueError("webhook secret must hold at least 16 bytes of key")
    return key


def new_secret() -> str:
    """A fresh secret in the ``whsec_`` format (24 random bytes, like the reference
    libraries generate)."""
    return PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(key, msg_id, timestamp, body)}
