#!/usr/bin/env bash
# Run the durable benchmark from anywhere: bash bench/run.sh [--quick] [--append bench/RESULTS.md] ...
# HTTP creates under open-loop load (wrk): bash bench/run.sh http-load [--rates ...] ...
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${1:-}" = "http-load" ]; then
    shift
    exec uv run python -m bench.http_load "$@"
fi
exec uv run python -m bench "$@"
