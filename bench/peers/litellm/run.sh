#!/usr/bin/env bash
# Start the LiteLLM proxy (pinned 1.80.0) in the foreground for peer benchmarks.
#
#   UPSTREAM_PORT=18090 PORT=4000 bench/peers/litellm/run.sh
#
# Proxies model "mock" to http://127.0.0.1:${UPSTREAM_PORT}/v1 (e.g. started with
#   python3 bench/peers/litellm/mock_upstream.py --port 18090).
# Installs the venv ${KEEL_CACHE_DIR:-$HOME/.cache/keel}/litellm-venv on first use
# (~1.5 min from PyPI). Extra arguments are passed to `litellm`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${KEEL_CACHE_DIR:-$HOME/.cache/keel}/litellm-venv"
LITELLM_VERSION="${LITELLM_VERSION:-1.80.0}"
PORT="${PORT:-4000}"
UPSTREAM_PORT="${UPSTREAM_PORT:-18090}"
WORKERS="${LITELLM_WORKERS:-1}"

if [ ! -x "$VENV/bin/litellm" ] || ! "$VENV/bin/python" -c \
    "import importlib.metadata as m,sys; sys.exit(m.version('litellm')!='$LITELLM_VERSION')" 2>/dev/null; then
  echo "[litellm] installing litellm[proxy]==$LITELLM_VERSION into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION" >&2
fi

export UPSTREAM_API_BASE="http://127.0.0.1:${UPSTREAM_PORT}/v1"
export UPSTREAM_API_KEY="${UPSTREAM_API_KEY:-sk-mock}"
# Offline and quiet: use the bundled model-cost map instead of fetching it,
# no telemetry, minimal logging, no proxy DB.
export LITELLM_LOCAL_MODEL_COST_MAP=True
export LITELLM_TELEMETRY=False
export LITELLM_LOG="${LITELLM_LOG:-ERROR}"
export LITELLM_MODE=PRODUCTION
export DISABLE_ADMIN_UI=True
export NO_DOCS=True
unset DATABASE_URL

cd "$HERE"
exec "$VENV/bin/litellm" --config "$HERE/config.yaml" --host 127.0.0.1 --port "$PORT" \
  --num_workers "$WORKERS" --telemetry False "$@"
