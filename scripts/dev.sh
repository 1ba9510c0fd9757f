#!/usr/bin/env bash
# Start the whole system locally: the API on http://127.0.0.1:8000, a worker, and the
# scheduler function ticking every 5 s. PostgreSQL/Redis: DATABASE_URL/REDIS_URL, else the
# local default ports, else throwaway servers. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/uv.sh
uv sync --frozen --quiet
exec_uv run --frozen python -m scripts.local_stack "$@"
