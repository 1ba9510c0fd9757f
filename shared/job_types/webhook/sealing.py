"""Credentials in webhook payloads: sealed at rest, hidden in answers.

A webhook often carries a credential for its receiver (``Authorization: Bearer ...``, an
API key header, ``https://user:password@host/``). Anyone who may list jobs would read it
back from ``GET /jobs``, and anyone with a database backup would too. So before a payload
is stored, its credential headers and URL user info are moved into one Fernet token
(``sealed``) and replaced by ``***``; the worker opens the token again when it parses the
payload; API answers only ever show ``***``.

Credential headers: Authorization, Proxy-Authorization, Cookie, X-Api-Key, and any the
payload names in ``secret_headers``. The key is ``AJS_PAYLOAD_KEY`` (Fernet keys,
comma-separated to rotate: the first seals, all open). cryptography is imported when a
payload actually holds a credential, not when the API starts.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

    from shared.settings import Settings

MASK = "***"
SEALED = "sealed"  # the stored payload's field holding the token
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
GENERATE = ("python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'")


def secret_names(payload: dict[str, Any]) -> set[str]:
    named = payload.get("secret_headers") or []
    return {*CREDENTIAL_HEADERS, *(str(n).lower() for n in named)}


def has_userinfo(url: str) -> bool:
    parts = urlsplit(url)
    return parts.username is not None or parts.password is not None


def without_userinfo(url: str) -> str:
    """The URL as answers and error messages may show it."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{MASK}@{host}"))


def no_key_message(what: str) -> str:
    return (f"{what} carries a credential, which is stored only encrypted, and "
            f"AJS_PAYLOAD_KEY is not set; generate a key with {GENERATE}")


def _fernet(settings: Settings) -> MultiFernet:
    from cryptography.fernet import Fernet, MultiFernet

    keys = [k.strip() for k in settings.payload_key.split(",") if k.strip()]
    if not keys:
        raise ValueError(no_key_message("the payload"))
    try:
        return MultiFernet([Fernet(k) for k in keys])
    except ValueError as exc:  # never echo the key itself
        raise ValueError(f"AJS_PAYLOAD_KEY does not hold Fernet keys ({GENERATE})") from exc


def seal(payload: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The payload to store: credentials moved into one token, ``***`` in their place."""
    names = secret_names(payload)
    headers: dict[str, str] = payload.get("headers") or {}
    secret = {k: v for k, v in headers.items() if k.lower() in names}
    url = str(payload.get("url", ""))
    if not secret and not has_userinfo(url):
        return payload
    plain = json.dumps({"headers": secret, "url": url}, separators=(",", ":")).encode()
    stored = dict(payload)
    stored[SEALED] = _fernet(settings).encrypt(plain).decode("ascii")
    return _masked(stored, names)


def unseal(stored: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The payload with its credentials back (a payload without a token is returned as is)."""
    token = stored.get(SEALED)
    if token is None:
        return stored
    from cryptography.fernet import InvalidToken

    try:
        opened = json.loads(_fernet(settings).decrypt(str(token).encode("ascii")))
    except (InvalidToken, UnicodeEncodeError):
        raise ValueError("the payload's sealed credentials cannot be opened: AJS_PAYLOAD_KEY "
                         "no longer holds the key that sealed them") from None
    payload = {k: v for k, v in stored.items() if k != SEALED}
    payload["headers"] = {**(payload.get("headers") or {}), **opened["headers"]}
    payload["url"] = opened["url"]
    return payload


def redact(stored: dict[str, Any]) -> dict[str, Any]:
    """What answers show: no token, ``***`` for credentials (also in payloads stored
    before sealing existed, which hold them in plain text)."""
    shown = {k: v for k, v in stored.items() if k != SEALED}
    return _masked(shown, secret_names(stored))


def _masked(payload: dict[str, Any], names: set[str]) -> dict[str, Any]:
    headers = payload.get("headers")
    if isinstance(headers, dict):
        payload["headers"] = {k: MASK if k.lower() in names else v for k, v in headers.items()}
    if isinstance(payload.get("url"), str):
        payload["url"] = without_userinfo(payload["url"])
    return payload
