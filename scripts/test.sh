#!/usr/bin/env bash
# Run the whole test suite (PostgreSQL and Redis must be running: DATABASE_URL/REDIS_URL, or
# the local default ports; the suite starts LocalStack, Prometheus and the rest itself).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/uv.sh
uv sync --frozen --quiet
exec_uv run --frozen pytest "$@"
