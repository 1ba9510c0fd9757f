#!/usr/bin/env bash
# Run the whole test suite (PostgreSQL and Redis must be running: DATABASE_URL/REDIS_URL, or
# the local default ports; the suite starts LocalStack, Prometheus and the rest itself).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
python3 -m uv sync --frozen --quiet
exec python3 -m uv run --frozen pytest "$@"
