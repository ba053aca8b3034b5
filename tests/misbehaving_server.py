"""A small OpenAI-compatible server that misbehaves on purpose (standard library only).

Tests start it in a subprocess on 127.0.0.1 (`python tests/misbehaving_server.py`, it prints its
port) and steer it from the prompt: a last message containing `#fault=KIND:K` fails the first K
attempts of that prompt (K omitted: every attempt). KIND is one of
  429        HTTP 429 with Retry-After: 0
  500        HTTP 500
  close      headers and half a body, then the connection is closed
  stall      no answer for STALL_S seconds (longer than the client's timeout)
  badjson    HTTP 200 with a body that is not JSON
  400        HTTP 400 (the request's own fault: must not be retried)
  nologprobs a normal answer without the `logprobs` field (every attempt)
  n1         one choice whatever `n` asks (a server without n support)
Every attempt is counted per prompt; GET /stats returns the counts, request times and a log of
the requests answered (prompt, seed, n). `--delay S` makes every answer take S seconds.
With `--require-key KEY`, a request without `Authorization: Bearer KEY` gets a 401 whose
message echoes the key it got, as some hosted APIs do (the client must scrub it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STALL_S = 3.0
FAULT = re.compile(r"#fault=([a-z0-9]+)(?::(\d+))?")

lock = threading.Lock()
attempts: dict[str, int] = {}
times: list[float] = []
answered: list[dict] = []  # every request answered with 200: prompt, seed, n


def prompt_text(body: dict) -> str:
    if "messages" in body:
        return body["messages"][-1]["content"]
    return body.get("prompt") if isinstance(body.get("prompt"), str) else json.dumps(body.get("prompt"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    required_key: str | None = None
    delay_s = 0.0

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, payload, headers: dict | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        self._send(status, {"error": {"message": message, "code": status}}, headers)

    def do_GET(self):
        if self.path == "/stats":
            with lock:
                self._send(200, {"attempts": attempts, "times": times, "answered": answered})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "mock", "object": "model"}]})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:  # not JSON (a file upload): no such route here, answered below
            body = {}
        text = prompt_text(body)
        with lock:
            attempts[text] = attempt = attempts.get(text, 0) + 1
            times.append(time.time())
        if self.required_key is not None:
            got = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if got != self.required_key:
                return self._error(401, f"Incorrect API key provided: {got}")
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            return self._error(404, f"no route {self.path}")
        if body.get("model") != "mock":
            return self._error(404, f"The model `{body.get('model')}` does not exist.")
        match = FAULT.search(text)
        kind, times_to_fail = (match.group(1), int(match.group(2) or 1 << 30)) if match else (None, 0)
        failing = attempt <= times_to_fail
        if failing and kind == "429":
            return self._error(429, "rate limited", {"Retry-After": "0"})
        if failing and kind == "500":
            return self._error(500, "internal error")
        if failing and kind == "400":
            return self._error(400, "this request is malformed")
        if failing and kind == "badjson":
            return self._send(200, b'{"choices": [ {"text": oops')
        if failing and kind == "stall":
            time.sleep(STALL_S)
            return self._error(500, "too late")
        if failing and kind == "close":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "4000")
            self.end_headers()
            self.wfile.write(b'{"choices": [')
            self.wfile.flush()
            self.close_connection = True
            return
        if self.delay_s:
            time.sleep(self.delay_s)
        data = answer(body, text, logprobs=kind != "nologprobs", n=1 if kind == "n1" else None)
        with lock:
            answered.append({"prompt": text, "seed": body.get("seed"), "n": body.get("n", 1)})
        self._send(200, data)


def answer(body: dict, text: str, logprobs: bool = True, n: int | None = None) -> dict:
    """A completion whose text names the sample and the seed, so every answer can be traced to its request."""
    chat = "messages" in body
    n = n or body.get("n", 1)
    choices = []
    for k in range(n):
        reply = f"answer {k} seed {body.get('seed')}" if body.get("max_tokens", 16) > 1 else "1"
        tokens = [reply, "</s>"]
        choice = {"index": k, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": reply}
            top = [{"token": "1", "logprob": -0.1}, {"token": "2", "logprob": -2.4}]
            content = [{"token": t, "logprob": -0.5, "top_logprobs": top if i == 0 else []}
                       for i, t in enumerate(tokens)]
            choice["logprobs"] = {"content": content} if logprobs else None
        else:
            choice["text"] = reply
            choice["logprobs"] = ({"tokens": tokens, "token_logprobs": [-0.5, -0.5],
                                   "top_logprobs": [{"1": -0.1, "2": -2.4}, {}]} if logprobs else None)
        if not logprobs:
            del choice["logprobs"]
        choices.append(choice)
    return {"id": "x", "object": "chat.completion" if chat else "text_completion", "model": "mock",
            "choices": choices, "usage": {"prompt_tokens": len(text), "completion_tokens": 2 * n,
                                          "total_tokens": len(text) + 2 * n}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--require-key", default=None)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    Handler.required_key = args.require_key
    Handler.delay_s = args.delay
    ThreadingHTTPServer.request_queue_size = 128  # the accept backlog: many clients connect at once
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
