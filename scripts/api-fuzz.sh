#!/usr/bin/env bash
# Checks the HTTP API against its own OpenAPI document with schemathesis (PyPI): every check
# on, a bounded number of examples per operation, once per token of several roles (admin, the
# read-only auditor, and gateway, which may use only the gateway). Starts `keel serve` on a
# temporary data directory and a free port, creates the users and tokens with the CLI, and
# stops the server at the end. Exits non-zero on any failure. scripts/api-fuzz.toml names the two
# operations whose valid requests the document cannot fully state, and why.
#
# Environment: KEEL_BIN (default: target/debug/keel, built if missing), KEEL_CACHE_DIR (where
# the schemathesis venv is cached; default ~/.cache/keel), KEEL_FUZZ_EXAMPLES (examples per
# operation and mode; default 20), KEEL_FUZZ_SEED (default 1, so a failure can be replayed).
set -euo pipefail
cd "$(dirname "$0")/.."

KEEL="$(realpath -m "${KEEL_BIN:-target/debug/keel}")"
if [ ! -x "$KEEL" ]; then
    cargo build --quiet -p keel --bin keel
fi
EXAMPLES="${KEEL_FUZZ_EXAMPLES:-20}"
config="$PWD/scripts/api-fuzz.toml"
SEED="${KEEL_FUZZ_SEED:-1}"

# schemathesis in a cached venv, pinned so that a new release cannot change the verdict.
VENV="${KEEL_CACHE_DIR:-$HOME/.cache/keel}/schemathesis-venv"
SCHEMATHESIS_VERSION=4.32.5
if [ ! -x "$VENV/bin/schemathesis" ] \
    || [ "$("$VENV/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

data="$(mktemp -d)"
server_pid=""
stop() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$data"
}
trap stop EXIT

# Users and their tokens, made before the server takes the data directory's lock.
roles=(admin auditor gateway)
declare -A tokens
for role in "${roles[@]}"; do
    "$KEEL" --log warn user add "fuzz-$role" --roles "$role" --data-dir "$data" >/dev/null
    tokens[$role]="$("$KEEL" --log warn token create --name "fuzz-$role" --user "fuzz-$role" --data-dir "$data")"
done

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
"$KEEL" --log warn serve --data-dir "$data" --workflows workflows --listen "127.0.0.1:$port" \
    2>"$data/serve.log" &
server_pid=$!
for _ in $(seq 1 100); do
    curl -fsS "$base/readyz" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$data/serve.log" >&2; exit 1; }
    sleep 0.2
done

# Something for the operations to find: a case of each bundled workflow that takes these
# inputs (without the sandbox their actions fail, so exceptions are raised too).
for pair in invoice-approval:examples/invoice.json ticket-routing:examples/ticket.json; do
    curl -fsS -o /dev/null -X POST "$base/v1/workflows/${pair%%:*}/cases" \
        -H "Authorization: Bearer ${tokens[admin]}" -H 'content-type: application/json' \
        -d @"${pair#*:}"
done
sleep 2

status=0
for role in "${roles[@]}"; do
    echo "== schemathesis as $role ($EXAMPLES examples per operation, seed $SEED)"
    # Run from the temporary directory: schemathesis keeps a cache in its working directory.
    (cd "$data" && "$VENV/bin/schemathesis" --config-file "$config" run "$base/v1/openapi.json" \
        --checks all \
        --max-examples "$EXAMPLES" \
        --seed "$SEED" \
        --generation-database none \
        --request-timeout 30 \
        --no-color \
        --header "Authorization: Bearer ${tokens[$role]}") \
        || status=1
done
if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "keel serve died during the run:" >&2
    cat "$data/serve.log" >&2
    status=1
fi
exit "$status"
