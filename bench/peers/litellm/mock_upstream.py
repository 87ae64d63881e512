#!/usr/bin/env python3
"""Tiny OpenAI-compatible upstream for proxy benchmarks (stdlib only).

    python3 mock_upstream.py [--port 18090] [--delay-ms 0]

GET  /v1/models            -> one model "mock"
GET  /health               -> {"status":"ok"}
POST /v1/chat/completions  -> fixed completion; honours "stream": true (SSE,
                              with a usage chunk when stream_options.include_usage)
"""
import argparse, json, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTENT = '{"label": "ham"}'
USAGE = {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real upstream
    delay = 0.0

    def log_message(self, *args):
        pass

    def _json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._json(200, {"object": "list", "data": [
                {"id": "mock", "object": "model", "created": 0, "owned_by": "keel"}]})
        elif self.path == "/health":
            self._json(200, {"status": "ok"})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        try:
            req = json.loads(self.rfile.read(n) or b"{}")
        except ValueError:
            return self._json(400, {"error": {"message": "bad json"}})
        if not self.path.rstrip("/").endswith("/chat/completions"):
            return self._json(404, {"error": {"message": "not found"}})
        if self.delay:
            time.sleep(self.delay)
        model = req.get("model", "mock")
        cid, created = "chatcmpl-mock", int(time.time())
        if not req.get("stream"):
            return self._json(200, {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": CONTENT}}],
                "usage": USAGE})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        chunks = [dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
        for piece in ('{"label": ', '"ham"}'):
            chunks.append(dict(base, choices=[{"index": 0, "delta": {"content": piece}, "finish_reason": None}]))
        chunks.append(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        if (req.get("stream_options") or {}).get("include_usage"):
            chunks.append(dict(base, choices=[], usage=USAGE))
        for c in chunks:
            self.wfile.write(b"data: " + json.dumps(c).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18090)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    a = ap.parse_args()
    Handler.delay = a.delay_ms / 1000.0
    srv = ThreadingHTTPServer((a.host, a.port), Handler)
    srv.daemon_threads = True
    print(f"mock upstream on http://{a.host}:{a.port}/v1", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
