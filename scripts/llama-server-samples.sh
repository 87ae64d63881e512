#!/usr/bin/env bash
# Capture real llama-server responses into examples/data/llama-server-samples/
# (used to shape test mocks). Starts the local server via scripts/local-llm.sh.
#
#   scripts/llama-server-samples.sh
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$REPO/examples/data/llama-server-samples"
mkdir -p "$OUT"

URL="$("$REPO/scripts/local-llm.sh" start | tail -1)"
URL="${URL#KEEL_LOCAL_LLM_URL=}"   # http://127.0.0.1:PORT/v1
BASE="${URL%/v1}"

SCHEMA='{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"label":{"type":"string","enum":["spam","ham"]}},"required":["label"]}}}'
MESSAGES='[{"role":"system","content":"Classify the e-mail as spam or ham. Answer in JSON."},{"role":"user","content":"Subject: WIN a FREE iPhone!!!\n\nClick here to claim your prize now."}]'

req() { # name body
  printf '%s\n' "$2" | python3 -m json.tool >"$OUT/$1.request.json"
}

post_json() { # name body
  req "$1" "$2"
  curl -sS -m 120 "$URL/chat/completions" -H 'Content-Type: application/json' -d "$2" \
    | python3 -m json.tool >"$OUT/$1.response.json"
  echo "wrote $OUT/$1.response.json" >&2
}

post_stream() { # name body   (raw SSE bytes, as sent)
  req "$1" "$2"
  curl -sS -N -m 120 "$URL/chat/completions" -H 'Content-Type: application/json' -d "$2" \
    >"$OUT/$1.response.txt"
  echo "wrote $OUT/$1.response.txt" >&2
}

curl -sS "$BASE/health" | python3 -m json.tool >"$OUT/health.response.json"
curl -sS "$URL/models" | python3 -m json.tool >"$OUT/models.response.json"

# 1. non-streaming, JSON schema, logprobs with top_logprobs=5
post_json chat-json-schema-logprobs \
  "{\"model\":\"smollm2-135m-instruct\",\"temperature\":0,\"max_tokens\":40,\"messages\":$MESSAGES,\"response_format\":$SCHEMA,\"logprobs\":true,\"top_logprobs\":5}"

# 2. non-streaming, JSON schema, no logprobs
post_json chat-json-schema \
  "{\"model\":\"smollm2-135m-instruct\",\"temperature\":0,\"messages\":$MESSAGES,\"response_format\":$SCHEMA}"

# 3. streaming with usage chunk
post_stream chat-stream-usage \
  "{\"model\":\"smollm2-135m-instruct\",\"temperature\":0,\"max_tokens\":40,\"messages\":$MESSAGES,\"response_format\":$SCHEMA,\"stream\":true,\"stream_options\":{\"include_usage\":true}}"

# 4. streaming with usage and logprobs (top 2)
post_stream chat-stream-usage-logprobs \
  "{\"model\":\"smollm2-135m-instruct\",\"temperature\":0,\"max_tokens\":40,\"messages\":$MESSAGES,\"response_format\":$SCHEMA,\"stream\":true,\"stream_options\":{\"include_usage\":true},\"logprobs\":true,\"top_logprobs\":2}"

# 5. error: prompt longer than the slot's context
LONG="$(python3 -c 'print("spam " * 6000)')"
BODY="{\"model\":\"smollm2-135m-instruct\",\"messages\":[{\"role\":\"user\",\"content\":\"$LONG\"}]}"
printf '{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"spam spam ... (6000 times)"}]}\n' \
  >"$OUT/error-context-exceeded.request.json"
code="$(curl -sS -m 120 -o "$OUT/error-context-exceeded.response.json.tmp" -w '%{http_code}' \
  "$URL/chat/completions" -H 'Content-Type: application/json' -d "$BODY")"
python3 -m json.tool "$OUT/error-context-exceeded.response.json.tmp" >"$OUT/error-context-exceeded.response.json"
rm -f "$OUT/error-context-exceeded.response.json.tmp"
echo "error sample: HTTP $code" >&2
echo "$code" >"$OUT/error-context-exceeded.http-status.txt"
