#!/usr/bin/env bash
# Run the durable benchmark from anywhere: bash bench/run.sh [--quick] [--append bench/RESULTS.md] ...
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec uv run python -m bench "$@"
