"""An OpenAI-compatible server with a fixed request budget per window (standard library only).

`--budget B --window W`: at most B requests are answered in each W-second window (windows start
when the server does); the rest get HTTP 429 with the seconds to the window's end in
`Retry-After`. With `--headers` every answer also carries OpenAI's `x-ratelimit-limit-requests`,
`x-ratelimit-remaining-requests` and `x-ratelimit-reset-requests`. GET /stats returns every
request's time and status, the start time, the window and the budget.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from misbehaving_server import answer, prompt_text  # noqa: E402

lock = threading.Lock()
log: list[tuple[float, int]] = []
used: dict[int, int] = {}
T0 = time.time()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    budget, window, headers_on = 10, 1.0, False

    def log_message(self, *args):
        pass

    def _send(self, status: int, payload: dict, headers: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with lock:
            self._send(200, {"t0": T0, "window": self.window, "budget": self.budget, "log": log}, {})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        now = time.time()
        index = math.floor((now - T0) / self.window)
        left = T0 + (index + 1) * self.window - now
        with lock:
            ok = used.get(index, 0) < self.budget
            if ok:
                used[index] = used.get(index, 0) + 1
            remaining = self.budget - used.get(index, 0)
            log.append((now, 200 if ok else 429))
        headers = {}
        if self.headers_on:
            headers = {"x-ratelimit-limit-requests": str(self.budget),
                       "x-ratelimit-remaining-requests": str(remaining),
                       "x-ratelimit-reset-requests": f"{left * 1000:.0f}ms"}
        if not ok:
            return self._send(429, {"error": {"message": "Rate limit reached for requests"}},
                              {**headers, "Retry-After": f"{left:.3f}"})
        self._send(200, answer(body, prompt_text(body)), headers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=int, default=10)
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--headers", action="store_true")
    args = parser.parse_args()
    Handler.budget, Handler.window, Handler.headers_on = args.budget, args.window, args.headers
    ThreadingHTTPServer.request_queue_size = 128  # the accept backlog: many clients connect at once
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
