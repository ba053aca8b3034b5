"""`rlaif serve`: an rlaif reward (`rlaif.rewards`) as an HTTP service, for trainers that call out for rewards.

Endpoints:
- `POST /get_reward`: OpenRLHF's remote reward-model protocol (`--reward.remote_url
  http://HOST:PORT/get_reward`). Request `{"query": [prompt + response text], "prompts": [prompt
  text], "labels": [...]}`, answer `{"rewards": [...], "scores": [...], "extra_logs": {...}}`, as
  OpenRLHF 0.11.2 sends and reads them (openrlhf/utils/agent.py `_fetch_rewards_via_http`,
  openrlhf/cli/serve_rm.py).
- `POST /score`: plain JSON, `{"prompts": [...], "completions": [...], "columns": {...}, "groups": [...]}`
  -> `{"rewards": [...], "details": [...]}` (verl's `compute_score`, scripts, anything else).
- `GET /health`, `GET /metrics` (requests, batch sizes, latency percentiles, judgments per second).

Concurrent requests are gathered into one judge call (up to `max_batch_size` completions, waiting
at most `max_wait_ms` for more after the first), so a trainer that sends one completion per request
still gets batched forward passes. The server listens on 127.0.0.1 by default; on any other address
every request needs the bearer token (`Authorization: Bearer TOKEN`, or `?token=TOKEN` for clients
that cannot set headers, like OpenRLHF). Bodies over `max_body_bytes` get 413; malformed ones 422
naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import secrets
import socket
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.datastructures import URL, Headers, QueryParams

from rlaif.errors import ConfigError, InputError
from rlaif.records import Message
from rlaif.request_batching import Batcher, Job, Metrics
from rlaif.review.app import LOOPBACK_NAMES, is_loopback
from rlaif.rewards import JudgeReward, as_chat, check_groups, consecutive_groups

log = logging.getLogger(__name__)

TOKEN_ENV = "RLAIF_SERVE_TOKEN"
# End-of-turn markers OpenRLHF leaves on the decoded response (it decodes with skip_special_tokens=False).
END_TOKENS = ("</s>", "<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end|>", "<end_of_turn>", "<eos>")
_CHATML = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>\n?|$)", re.DOTALL)


# ---------------------------------------------------------------- request bodies


def _check_length(value: list, info, of: str) -> list:
    expected = info.data.get(of)
    if expected is not None and len(value) != len(expected):
        raise ValueError(f"has {len(value)} entries; expected one per entry of '{of}' ({len(expected)})")
    return value


class ScoreRequest(BaseModel):
    """`POST /score`: completions to reward, with their prompts (text or chat messages) and columns."""

    model_config = ConfigDict(extra="forbid")
    prompts: list[str | list[Message]] = Field(min_length=1)
    completions: list[str | list[Message]]
    columns: dict[str, list[Any]] = Field(default_factory=dict)
    groups: list[int] | None = None

    @field_validator("completions", "groups")
    @classmethod
    def _one_per_prompt(cls, value, info):
        return value if value is None else _check_length(value, info, "prompts")

    @field_validator("columns")
    @classmethod
    def _column_lengths(cls, value: dict, info) -> dict:
        for name, values in value.items():
            expected = info.data.get("prompts")
            if expected is not None and len(values) != len(expected):
                raise ValueError(f"column {name!r} has {len(values)} values; expected one per prompt ({len(expected)})")
        return value


class OpenRLHFRequest(BaseModel):
    """`POST /get_reward`: what OpenRLHF's remote reward client sends (other keys are ignored)."""

    model_config = ConfigDict(extra="ignore")
    query: list[str] = Field(min_length=1)
    prompts: list[str]
    labels: list[Any] | None = None

    @field_validator("prompts", "labels")
    @classmethod
    def _one_per_query(cls, value, info):
        return value if value is None else _check_length(value, info, "query")


UNION_TAGS = {"str", "list[Message]"}  # pydantic names the union member it tried in an error's location


def field_errors(e: ValidationError) -> JSONResponse:
    """422 in FastAPI's shape, plus one line that names the first bad field."""
    details = [{"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]} for err in e.errors()]
    first = e.errors()[0]
    if any(p in UNION_TAGS for p in first["loc"]):  # of the union's branches, the one that got furthest says most
        first = max(e.errors(), key=lambda err: len(err["loc"]) if err["loc"][:2] == first["loc"][:2] else 0)
    loc = [p for p in first["loc"] if p not in UNION_TAGS]
    msg = first["msg"].removeprefix("Value error, ")
    if loc and len(loc) < len(first["loc"]) and first["loc"][-1] in UNION_TAGS:
        msg = "expected text or a list of {role, content} messages"
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "body"
    return JSONResponse({"error": f"field '{where}': {msg}", "detail": details}, status_code=422)


def chat_from_text(prompt: str) -> list[dict]:
    """An already formatted prompt back into messages: ChatML is parsed, anything else is one user message."""
    turns = [{"role": r, "content": c} for r, c in _CHATML.findall(prompt)]
    if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"].strip():
        turns.pop()  # the generation prompt
    return turns or [{"role": "user", "content": prompt}]


def response_of(query: str, prompt: str, end_tokens: tuple[str, ...]) -> str | None:
    """The response part of an OpenRLHF query (prompt + response), end-of-turn markers removed."""
    if not query.startswith(prompt):
        return None
    text = query[len(prompt):]
    while True:
        stripped = text.rstrip()
        end = next((t for t in end_tokens if stripped.endswith(t)), None)
        if end is None:
            return text
        text = stripped[:-len(end)]


# ---------------------------------------------------------------- the app


class Guard:
    """ASGI middleware: the token off loopback, the Host check on loopback, and request metrics."""

    def __init__(self, app, *, need_token: bool, token: str | None, metrics: Metrics):
        self.app, self.need_token, self.token, self.metrics = app, need_token, token, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope)
        if refusal is not None:
            self.metrics.requests[scope["path"]] += 1
            self.metrics.errors[str(refusal.status_code)] += 1
            return await refusal(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        await self.app(scope, receive, sending)
        self.metrics.requests[scope["path"]] += 1
        if status[0] >= 400:
            self.metrics.errors[str(status[0])] += 1
        elif scope["method"] == "POST":
            self.metrics.latencies.append(time.perf_counter() - t0)

    def refusal(self, scope) -> JSONResponse | None:
        if self.need_token:
            given = Headers(scope=scope).get("authorization", "").removeprefix("Bearer ").strip()
            given = given or QueryParams(scope["query_string"]).get("token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return JSONResponse({"error": "this reward server needs its token: 'Authorization: Bearer TOKEN' "
                                              "or ?token=TOKEN"}, status_code=401)
            return None
        host = URL(scope=scope).hostname or ""
        if host not in LOOPBACK_NAMES and not is_loopback(host):
            return JSONResponse({"error": "unexpected Host header for a loopback server"}, status_code=400)
        return None


DETAIL_FIELDS = ("group", "reward", "score_distribution", "raw_text", "judge_failure", "comparisons")


def create_app(reward: JudgeReward, *, host: str = "127.0.0.1", token: str | None = None, max_batch_size: int = 64,
               max_wait_ms: float = 2.0, max_body_bytes: int = 8 << 20, label_column: str | None = None,
               failure_reward: float = 0.0, end_tokens: tuple[str, ...] = END_TOKENS) -> FastAPI:
    """The reward service over one reward function. Off loopback a token is required (generated if None).

    `label_column`: the column OpenRLHF's `labels` fill; default the reference column of a pairwise
    reward against one, else `solution` (what verifiers read). `failure_reward`: what OpenRLHF gets
    for a completion the judge could not score (its protocol has no null); /score answers null.
    """
    if label_column is None:
        label_column = reward.against if reward.against not in (None, "group") else "solution"
    need_token = not is_loopback(host)
    token = token or (secrets.token_urlsafe(24) if need_token else None)
    metrics = Metrics()
    batcher = Batcher(reward, metrics, max_batch_size, max_wait_ms / 1000)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app = FastAPI(title="rlaif reward server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.token, app.state.metrics = token, metrics
    provenance = reward.judge.provenance.columns()

    app.add_middleware(Guard, need_token=need_token, token=token, metrics=metrics)

    async def read_json(request: Request, model: type[BaseModel]):
        """The validated body, or the error response (413 over the limit, 422 naming the field)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            return None, _too_large(max_body_bytes)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                return None, _too_large(max_body_bytes)
        try:
            return model.model_validate_json(bytes(body)), None
        except ValidationError as e:
            return None, field_errors(e)

    async def judged(chats: list[list[dict]], completions: list, columns: dict, groups: list[int] | None):
        if reward.against not in (None, "group") and reward.against not in columns:
            raise InputError(f"field 'columns.{reward.against}' is required: the reference answers of this "
                             "pairwise reward")
        if groups is None:
            groups = consecutive_groups(chats)
        else:
            check_groups(chats, groups)
        future = asyncio.get_running_loop().create_future()
        return await batcher.submit(Job(chats, completions, columns, groups, future))

    @app.post("/score")
    async def score(request: Request):
        body, error = await read_json(request, ScoreRequest)
        if error:
            return error
        try:
            rewards, records = await judged([as_chat(plain(p)) for p in body.prompts],
                                            [plain(c) for c in body.completions], body.columns, body.groups)
        except Exception as e:  # noqa: BLE001 - answered, never a dropped connection
            return failed(e)
        return JSONResponse({"rewards": rewards, "reward_name": reward.__name__, "judge": provenance,
                             "details": [{k: r[k] for k in DETAIL_FIELDS} for r in records]})

    @app.post("/get_reward")
    async def get_reward(request: Request):
        body, error = await read_json(request, OpenRLHFRequest)
        if error:
            return error
        completions = []
        for k, (query, prompt) in enumerate(zip(body.query, body.prompts)):
            text = response_of(query, prompt, end_tokens)
            if text is None:
                return JSONResponse({"error": f"field 'query[{k}]': does not start with prompts[{k}]"}, status_code=422)
            completions.append(text)
        columns = {label_column: body.labels} if body.labels is not None else {}
        try:
            rewards, _ = await judged([chat_from_text(p) for p in body.prompts], completions, columns, None)
        except Exception as e:  # noqa: BLE001
            return failed(e)
        values = [failure_reward if r is None else r for r in rewards]
        return JSONResponse({"rewards": values, "scores": values,
                             "extra_logs": {"judge_failed": [float(r is None) for r in rewards]}})

    @app.get("/health")
    async def health():
        return {"status": "ok", "reward_name": reward.__name__, "judge": provenance}

    @app.get("/metrics")
    async def metrics_():
        return metrics.snapshot(batcher.queue.qsize())

    return app


def plain(value):
    """Text, or validated messages back as plain dicts."""
    return value if isinstance(value, str) else [m.model_dump() for m in value]


def failed(e: Exception) -> JSONResponse:
    """422 for the request's own fault (bad rows, a missing column), 500 with the reason for the judge's."""
    if isinstance(e, InputError):
        return JSONResponse({"error": str(e)}, status_code=422)
    log.exception("judging failed")
    return JSONResponse({"error": f"the judge failed: {type(e).__name__}: {e}"}, status_code=500)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"error": f"request body over the limit of {limit} bytes"}, status_code=413)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 = any free port), bound before the server starts so its port is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} (--host/--port): {e.strerror}") from None
    sock.listen(2048)
    return sock


def server(app: FastAPI, log_level: str = "warning"):
    """A uvicorn server for `app`; `.run(sockets=[bind(host, port)])` serves until interrupted."""
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_keep_alive=30))


def serve_forever(reward: JudgeReward, *, host: str = "127.0.0.1", port: int = 8000, announce=log.info,
                  **options) -> None:
    """Serve `reward` until interrupted (`options`: those of `create_app`).

    The token off loopback is $RLAIF_SERVE_TOKEN, else a new one, which `announce` is given along
    with the URL (the CLI prints them).
    """
    token = os.environ.get(TOKEN_ENV)
    app = create_app(reward, host=host, token=token, **options)
    sock = bind(host, port)
    if app.state.token and not token:
        announce(f"token: {app.state.token}  (Authorization: Bearer TOKEN, or ?token=TOKEN)")
    announce(f"rlaif serve: {reward.__name__} at {url_of(sock)} (/get_reward, /score, /health, /metrics)")
    server(app).run(sockets=[sock])


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"
