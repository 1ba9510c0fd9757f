#!/usr/bin/env bash
# The serverless packaging, checked without an AWS account and without Docker:
#   1. the SAM CLI in its own virtual environment (its pins would fight the app's);
#   2. sam validate --lint, then the real AWS::Serverless transform for both authorizer
#      modes and SAM CLI's route discovery for `sam local start-api` (.ci/sam_offline_check.py);
#   3. sam build, no container;
#   4. the built artifacts answer `sam local generate-event` events in a fresh Python that
#      sees only the artifact, against a real PostgreSQL/Redis schema
#      (tests/test_sam_package.py, pointed at this build);
#   5. infra/docker-compose.yml validates with Debian's docker-compose.
# Needs PostgreSQL and Redis running (DATABASE_URL / REDIS_URL or the default local ports).
# Env: AJS_SAM_VENV (default ~/.cache/ajs-sam/venv).
set -euo pipefail
cd "$(dirname "$0")/.."

SAM_PIN="aws-sam-cli==1.170.0"
SAM_VENV="${AJS_SAM_VENV:-$HOME/.cache/ajs-sam/venv}"
export SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
say() { echo "sam-check: $*"; }

. scripts/uv.sh

# --- 1. the SAM CLI -----------------------------------------------------------------------
if [ "$(cat "$SAM_VENV/ajs-pin.txt" 2>/dev/null)" != "$SAM_PIN" ]; then
  say "installing $SAM_PIN into $SAM_VENV"
  rm -rf "$SAM_VENV"
  uv venv --quiet --python 3.11 "$SAM_VENV"
  uv pip install --quiet --python "$SAM_VENV/bin/python" "$SAM_PIN"
  echo "$SAM_PIN" > "$SAM_VENV/ajs-pin.txt"
fi
sam="$SAM_VENV/bin/sam"
say "$("$sam" --version)"

# --- 2. lint, transform, routes -------------------------------------------------------------
"$sam" validate --lint --template template.yaml
"$SAM_VENV/bin/python" .ci/sam_offline_check.py template.yaml

# --- 3. build ------------------------------------------------------------------------------
# python3.11 must be on PATH for a python3.11 function (no container).
"$sam" build --template template.yaml --build-dir .aws-sam/build

# --- 4. the built artifacts, invoked ------------------------------------------------------
uv sync --frozen --quiet
AJS_SAM_VENV="$SAM_VENV" AJS_SAM_BUILD_DIR="$PWD/.aws-sam/build" \
  uv run --frozen pytest -q -p no:cacheprovider tests/test_sam_package.py

# --- 5. the compose file ------------------------------------------------------------------
if ! command -v docker-compose >/dev/null; then
  say "installing Debian's docker-compose"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
fi
docker-compose -f infra/docker-compose.yml config -q
say "ok"
