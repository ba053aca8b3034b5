"""A small server that speaks OpenAI's Batch API (standard library only), misbehaving on request.

It follows the documented protocol: `POST /v1/files` (multipart, purpose=batch) stores a JSONL file;
`POST /v1/batches` creates a job (`validating` -> `in_progress` -> `finalizing` -> `completed` or
`expired`); `GET /v1/batches/{id}` reports it with `request_counts`; `GET /v1/batches` lists jobs,
newest first, with `after`/`has_more`; `GET /v1/files/{id}/content` downloads the output file
(`{"custom_id", "response": {"status_code", "body"}, "error": null}` lines) and the error file
(`{"custom_id", "response": null | {...}, "error": {"code", "message"}}` lines).

The last message of a request steers it, per submission of its custom id:
  #batch=error:K   fails its first K submissions (HTTP 500 in the error file)
  #batch=expire:K  is not reached in its first K submissions: the job ends `expired` and the
                   request is in the error file with code `batch_expired`
Requests are answered by tests/misbehaving_server.answer, one every 1/--rate seconds.
`--create-delay S` answers `POST /v1/batches` S seconds after the job was created (a window in
which a killed client has not yet learned the batch id). GET /stats reports every job, and how
often each custom id and each prompt was submitted.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
import uuid
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

sys.path.insert(0, str(Path(__file__).parent))
from misbehaving_server import answer  # noqa: E402

FAULT = re.compile(r"#batch=([a-z]+)(?::(\d+))?")
lock = threading.Lock()
files: dict[str, bytes] = {}
batches: dict[str, dict] = {}
order: list[str] = []
submissions: dict[str, int] = {}  # custom_id -> times submitted
prompt_submissions: dict[str, int] = {}
events = {"batch_lists": 0, "sync_requests": 0}


def prompt_of(body: dict) -> str:
    return body["messages"][-1]["content"] if "messages" in body else str(body.get("prompt"))


def work(batch_id: str, lines: list[dict], rate: float) -> None:
    """Process one job in the background, as a provider would."""
    time.sleep(0.05)
    with lock:
        batches[batch_id]["status"] = "in_progress"
        batches[batch_id]["in_progress_at"] = int(time.time())
    output, errors, expired = [], [], False
    for line in lines:
        cid, body = line["custom_id"], line["body"]
        text = prompt_of(body)
        with lock:
            submitted = submissions[cid]
        match = FAULT.search(text)
        kind, times = (match.group(1), int(match.group(2) or 1 << 30)) if match else (None, 0)
        failing = submitted <= times
        if failing and kind == "expire":
            expired = True
            errors.append({"id": f"batch_req_{uuid.uuid4().hex[:8]}", "custom_id": cid, "response": None,
                           "error": {"code": "batch_expired",
                                     "message": "This request could not be executed before the completion window "
                                                "expired."}})
            continue
        time.sleep(1 / rate)
        if failing and kind == "error":
            errors.append({"id": f"batch_req_{uuid.uuid4().hex[:8]}", "custom_id": cid,
                           "response": {"status_code": 500, "request_id": "r", "body": {
                               "error": {"message": "The server had an error processing your request."}}},
                           "error": None})
        else:
            output.append({"id": f"batch_req_{uuid.uuid4().hex[:8]}", "custom_id": cid,
                           "response": {"status_code": 200, "request_id": "r", "body": answer(body, text)},
                           "error": None})
        with lock:
            counts = batches[batch_id]["request_counts"]
            counts["completed"] = len(output)
            counts["failed"] = len(errors)
    with lock:
        b = batches[batch_id]
        b["status"] = "finalizing"
    time.sleep(0.05)
    with lock:
        b["request_counts"].update(completed=len(output), failed=len(errors))
        if output:
            b["output_file_id"] = _store_file("".join(json.dumps(x) + "\n" for x in output).encode())
        if errors:
            b["error_file_id"] = _store_file("".join(json.dumps(x) + "\n" for x in errors).encode())
        b["status"] = "expired" if expired else "completed"
        b["expired_at" if expired else "completed_at"] = int(time.time())


def _store_file(data: bytes) -> str:
    file_id = f"file-{uuid.uuid4().hex[:12]}"
    files[file_id] = data
    return file_id


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    rate = 20.0
    create_delay = 0.0

    def log_message(self, *args):
        pass

    def _send(self, status: int, payload, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": "invalid_request_error"}})

    def do_GET(self):
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        with lock:
            if url.path == "/stats":
                return self._send(200, {"batches": [batches[i] for i in order], "submissions": submissions,
                                        "prompt_submissions": prompt_submissions, **events})
            if parts[:2] == ["v1", "batches"] and len(parts) == 2:
                events["batch_lists"] += 1
                query = parse_qs(url.query)
                limit = int(query.get("limit", ["20"])[0])
                newest = [batches[i] for i in reversed(order)]
                if "after" in query:
                    ids = [b["id"] for b in newest]
                    newest = newest[ids.index(query["after"][0]) + 1:] if query["after"][0] in ids else []
                page = newest[:limit]
                return self._send(200, {"object": "list", "data": [_public(b) for b in page],
                                        "has_more": len(newest) > limit,
                                        "first_id": page[0]["id"] if page else None,
                                        "last_id": page[-1]["id"] if page else None})
            if parts[:2] == ["v1", "batches"] and len(parts) == 3 and parts[2] in batches:
                return self._send(200, _public(batches[parts[2]]))
            if parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content" and parts[2] in files:
                return self._send(200, files[parts[2]], "application/jsonl")
        self._error(404, f"no route {self.path}")

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/v1/files":
            form = _multipart(self.headers.get("Content-Type", ""), raw)
            if form.get("purpose") != b"batch" or "file" not in form:
                return self._error(400, "expected multipart fields purpose=batch and file")
            with lock:
                file_id = _store_file(form["file"])
            return self._send(200, {"id": file_id, "object": "file", "bytes": len(form["file"]),
                                    "created_at": int(time.time()), "filename": "batch.jsonl", "purpose": "batch"})
        if self.path == "/v1/batches":
            return self._create(json.loads(raw))
        if self.path in ("/v1/chat/completions", "/v1/completions"):
            with lock:
                events["sync_requests"] += 1
            body = json.loads(raw)
            return self._send(200, answer(body, prompt_of(body)))
        self._error(404, f"no route {self.path}")

    def _create(self, req: dict) -> None:
        with lock:
            data = files.get(req.get("input_file_id"))
        if data is None:
            return self._error(400, f"no such file: {req.get('input_file_id')}")
        lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        if any(line["url"] != req["endpoint"] for line in lines) or len({x["custom_id"] for x in lines}) != len(lines):
            return self._error(400, "every line must name the batch's endpoint, with a unique custom_id")
        batch_id = f"batch_{uuid.uuid4().hex[:12]}"
        with lock:
            for line in lines:
                submissions[line["custom_id"]] = submissions.get(line["custom_id"], 0) + 1
                text = prompt_of(line["body"])
                prompt_submissions[text] = prompt_submissions.get(text, 0) + 1
            batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": req["endpoint"], "errors": None,
                "input_file_id": req["input_file_id"], "completion_window": req.get("completion_window", "24h"),
                "status": "validating", "output_file_id": None, "error_file_id": None,
                "created_at": int(time.time()), "metadata": req.get("metadata"),
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                "custom_ids": [line["custom_id"] for line in lines]}
            order.append(batch_id)
        threading.Thread(target=work, args=(batch_id, lines, self.rate), daemon=True).start()
        if self.create_delay:
            time.sleep(self.create_delay)
        with lock:
            self._send(200, _public(batches[batch_id]))


def _public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "custom_ids"}


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    message = BytesParser(policy=email_policy).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.iter_parts()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate", type=float, default=20.0, help="requests processed per second")
    parser.add_argument("--create-delay", type=float, default=0.0)
    args = parser.parse_args()
    Handler.rate, Handler.create_delay = args.rate, args.create_delay
    ThreadingHTTPServer.request_queue_size = 128  # the accept backlog: many clients connect at once
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
