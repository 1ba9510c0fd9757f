"""Every SQL statement on the api_keys table, and the key format.

A key is ``ajs_`` followed by 32 random bytes (``secrets.token_urlsafe``): the prefix makes
a leaked key recognisable (secret scanners, logs), the bytes make it unguessable. Only
its SHA-256 is stored. A slow password hash (bcrypt, argon2) exists to make guessing a
*low-entropy* secret from its hash expensive; guessing 256 random bits is out of reach
whatever the hash costs, so a fast hash loses nothing and keeps a lookup at microseconds.

A key is looked up by its digest through a unique index. That comparison is not constant
time, and need not be: what a timing difference could reveal is how much of a stored
*digest* a guess's digest matches, and steering a guess towards a digest needs SHA-256
preimages. (Where a secret itself is compared, ``hmac.compare_digest`` is used.)
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence

import asyncpg

KEY_PREFIX = "ajs_"
KEY_BYTES = 32
SHOWN_CHARS = 12  # "ajs_" + 8: enough to tell keys apart in `list`, useless to an attacker
KEY_COLUMNS = "id, name, prefix, scopes, namespace, created_at, last_used_at, revoked_at"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def looks_like_key(text: str) -> bool:
    """Shape only (prefix, length, alphabet): lets garbage be refused without a query."""
    body = text[len(KEY_PREFIX):]
    return (text.startswith(KEY_PREFIX) and 40 <= len(body) <= 64
            and all(c.isascii() and (c.isalnum() or c in "-_") for c in body))


class ApiKeyStore:
    def __init__(self, pool: asyncpg.Pool | asyncpg.Connection) -> None:
        self.pool = pool

    async def create(self, name: str, scopes: Sequence[str], namespace: str | None
                     ) -> tuple[str, asyncpg.Record]:
        """A new key: returns the key itself (shown once, never stored) and its row."""
        key = new_key()
        row = await self.pool.fetchrow(
            f"""INSERT INTO api_keys (name, prefix, key_hash, scopes, namespace)
                VALUES ($1, $2, $3, $4::text[], $5) RETURNING {KEY_COLUMNS}""",
            name, key[:SHOWN_CHARS], digest(key), list(scopes), namespace)
        assert row is not None
        return key, row

    async def all(self, *, include_revoked: bool = False) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE $1 OR revoked_at IS NULL "
            "ORDER BY created_at, id", include_revoked)

    async def revoke(self, key_id: uuid.UUID) -> asyncpg.Record | None:
        """Revoke a live key; None when it is unknown or already revoked."""
        return await self.pool.fetchrow(
            f"""UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL
                RETURNING {KEY_COLUMNS}""", key_id)

    async def matching(self, ident: str) -> list[asyncpg.Record]:
        """Keys named by id or by their shown prefix (``list`` prints both)."""
        try:
            key_id: uuid.UUID | None = uuid.UUID(ident)
        except ValueError:
            key_id = None
        return await self.pool.fetch(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 OR prefix = $2",
            key_id, ident)

    async def lookup(self, key_digest: bytes, touch_after_seconds: float
                     ) -> asyncpg.Record | None:
        """The live key with this digest, or None (unknown or revoked).

        The same round trip records ``last_used_at``, but only when the recorded time is
        older than ``touch_after_seconds``: a key in steady use costs one write a minute,
        not one per request (and callers look a key up only when their cache expired).
        """
        return await self.pool.fetchrow(
            """
            WITH k AS (SELECT id, name, prefix, scopes, namespace, last_used_at
                       FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL),
            touched AS (
                UPDATE api_keys a SET last_used_at = now() FROM k
                WHERE a.id = k.id AND (k.last_used_at IS NULL
                      OR k.last_used_at < now() - make_interval(secs => $2))
                RETURNING a.id)
            SELECT id, name, prefix, scopes, namespace FROM k""",
            key_digest, touch_after_seconds)
