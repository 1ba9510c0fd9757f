"""Run the alembic migrations for a database and schema.

``python -m shared.store.migrate [upgrade|downgrade] [revision]`` uses the settings from the
environment; tests call :func:`upgrade` with their own schema.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from shared.settings import get_settings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent  # the repository (or the built package): alembic.ini


def _config(database_url: str | None, schema: str | None) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(HERE / "migrations"))
    cfg.attributes["database_url"] = database_url
    cfg.attributes["schema"] = schema
    return cfg


def upgrade(database_url: str | None = None, schema: str | None = None,
            revision: str = "head") -> None:
    """Bring the schema to ``revision``. Blocking: it runs its own event loop."""
    command.upgrade(_config(database_url, schema), revision)


def downgrade(database_url: str | None = None, schema: str | None = None,
              revision: str = "base") -> None:
    command.downgrade(_config(database_url, schema), revision)


def main(argv: list[str]) -> int:
    action = argv[0] if argv else "upgrade"
    settings = get_settings()
    if action == "upgrade":
        upgrade(settings.database_url, settings.db_schema, argv[1] if len(argv) > 1 else "head")
    elif action == "downgrade":
        downgrade(settings.database_url, settings.db_schema,
                  argv[1] if len(argv) > 1 else "base")
    else:
        print("usage: python -m shared.store.migrate [upgrade|downgrade] [revision]",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
