"""``python -m functions.api.keys``: create, list and revoke API keys.

    python -m functions.api.keys create --scopes jobs:write --name billing [--namespace billing]
    python -m functions.api.keys list [--all]
    python -m functions.api.keys revoke <id or shown prefix>

It talks to PostgreSQL with the process's settings (``DATABASE_URL``, ``AJS_DB_SCHEMA``, or
the Secrets Manager secret), so whoever may run it holds the database: managing keys is
not an API route, and no key can mint another. ``create`` prints the key alone on stdout
(``AJS_KEY=$(python -m functions.api.keys create ...)``) and what it is on stderr: the key
is shown this once and only its SHA-256 is kept. A revoked key stops working within
``AJS_AUTH_CACHE_SECONDS`` in every API process.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Sequence

import asyncpg

from shared.scopes import NAMESPACE_PATTERN, SCOPES
from shared.secret_settings import resolve_secrets
from shared.settings import Settings, get_settings
from shared.store.api_keys import ApiKeyStore


def _scopes(text: str) -> list[str]:
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise argparse.ArgumentTypeError(
            f"scopes are a comma-separated subset of {', '.join(SCOPES)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    return scopes


def _namespace(text: str) -> str:
    if not re.match(NAMESPACE_PATTERN, text):
        raise argparse.ArgumentTypeError(f"a namespace matches {NAMESPACE_PATTERN}")
    return text


def _name(text: str) -> str:
    if not 1 <= len(text) <= 100 or not text.isprintable():
        raise argparse.ArgumentTypeError("a name is 1 to 100 printable characters")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m functions.api.keys", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="make a key and print it (once)")
    create.add_argument("--scopes", type=_scopes, required=True,
                        help=f"comma-separated: {', '.join(SCOPES)} (admin implies "
                        "jobs:write, which implies jobs:read)")
    create.add_argument("--name", type=_name, required=True, help="who or what holds it")
    create.add_argument("--namespace", type=_namespace, default=None,
                        help="bind the key to a tenant: it sees and makes only that "
                        "namespace's jobs (default: unbound, sees every job)")
    listing = verbs.add_parser("list", help="the keys (never the keys themselves)")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    revoke = verbs.add_parser("revoke", help="revoke a key by id or shown prefix")
    revoke.add_argument("key", help="the id or the prefix that `list` shows")
    return p


async def run(args: argparse.Namespace, settings: Settings) -> int:
    conn = await asyncpg.connect(settings.database_url, timeout=settings.db_connect_timeout,
                                 server_settings={"search_path": settings.db_schema})
    try:
        keys = ApiKeyStore(conn)
        if args.verb == "create":
            key, row = await keys.create(args.name, args.scopes, args.namespace)
            print(f"created key {row['id']} ({row['prefix']}…) named {row['name']!r}, "
                  f"scopes {','.join(row['scopes'])}, namespace "
                  f"{row['namespace'] or '(unbound)'}; it is shown only now:",
                  file=sys.stderr)
            print(key)
            return 0
        if args.verb == "list":
            print("id\tprefix\tname\tscopes\tnamespace\tcreated\tlast used\trevoked")
            for r in await keys.all(include_revoked=args.all):
                print("\t".join(str(v) if v is not None else "-" for v in (
                    r["id"], r["prefix"], r["name"], ",".join(r["scopes"]), r["namespace"],
                    r["created_at"], r["last_used_at"], r["revoked_at"])))
            return 0
        live = [r for r in await keys.matching(args.key) if r["revoked_at"] is None]
        if len(live) != 1:
            print(f"no live key has the id or prefix {args.key!r}" if not live else
                  f"{len(live)} live keys have the prefix {args.key!r}: give the id",
                  file=sys.stderr)
            return 1
        revoked = await keys.revoke(live[0]["id"])
        if revoked is None:  # revoked by someone else in between
            print(f"key {live[0]['id']} was already revoked", file=sys.stderr)
            return 1
        print(f"revoked key {revoked['id']} ({revoked['prefix']}…) named "
              f"{revoked['name']!r}; API "
              f"processes stop accepting it within {settings.auth_cache_seconds:g} s",
              file=sys.stderr)
        return 0
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return asyncio.run(run(args, resolve_secrets(get_settings())))


if __name__ == "__main__":
    raise SystemExit(main())
