"""Any OpenAI-compatible server (`vllm serve`, TGI, llama.cpp, SGLang, hosted APIs) behind the engine protocol.

Why it looks like this:
- Plain `httpx` + asyncio: a semaphore bounds the requests in flight, an optional client-side
  rate limit spaces them (requests/min, tokens/min), so a hosted quota is respected.
- tenacity retries 429, 5xx, connection errors, timeouts and malformed bodies with jittered
  exponential backoff (a `Retry-After` header wins), a bounded number of times. A request that
  still fails is recorded on its rows and the run goes on. 401/403/404 stop the run at once
  with what to fix; a 400 is the request's own fault: recorded on its rows, not retried.
- Chat prompts go to `/chat/completions`, text prompts to `/completions`. `n` samples are one
  request; a server that returns fewer choices gets the rest as single requests (said once).
- `score` needs prompt log-probs, which vLLM gives: the prompt is tokenised by the server
  (`/tokenize`), prompt + continuation is sent as token ids with `prompt_logprobs`, so the
  numbers match the local engines token for token. `next_token_logprobs` generates one token with
  `top_logprobs` (up to 20), which chat-only hosted APIs also give.
- The API key is read from the environment variable named in the config and goes only into the
  Authorization header; every message that leaves this module is scrubbed of it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from rlaif.engines.base import Completion, GenerationRequest, GenerationResult, PromptInput
from rlaif.errors import EngineError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_TOP_LOGPROBS = 20  # the most OpenAI-compatible servers return per position
NO_LOGPROBS_FIX = "use a judge that parses the generated text instead of reading log-probs (a text-parsing judge)"


class ServerError(Exception):
    """An HTTP error status, or a body that is not the JSON we asked for."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, ServerError):
        return exc.status is None or exc.status == 429 or exc.status >= 500
    return isinstance(exc, httpx.TransportError)  # connection refused/reset, closed mid-response, timeouts


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class RateLimiter:
    """Spaces requests evenly so that at most `requests_per_minute` and `tokens_per_minute` go out."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self.next_request = self.next_tokens = 0.0
        self.lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        if not self.rpm and not self.tpm:
            return
        async with self.lock:
            now = time.monotonic()
            start = max(now, self.next_request, self.next_tokens)
            if self.rpm:
                self.next_request = start + 60.0 / self.rpm
            if self.tpm:
                self.next_tokens = start + tokens * 60.0 / self.tpm
        if start > now:
            await asyncio.sleep(start - now)


class OpenAIEngine:
    name = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 max_concurrency: int = 8, timeout_s: float = 60.0, max_retries: int = 5,
                 retry_backoff_s: float = 1.0, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, display_name: str | None = None):
        self.model = model
        self.model_id = display_name or model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) or None
        self.max_concurrency, self.timeout_s = max_concurrency, timeout_s
        self.max_retries, self.retry_backoff_s = max_retries, retry_backoff_s
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self._warned_n = False
        self.retries = 0  # retried attempts in this engine's life (reported by the benchmark and tests)

    @classmethod
    def from_block(cls, block, model: str, field: str = "generate") -> "OpenAIEngine":
        return cls(model, base_url=block.base_url, api_key_env=block.api_key_env,
                   max_concurrency=block.max_concurrency, timeout_s=block.timeout_s, max_retries=block.max_retries,
                   retry_backoff_s=block.retry_backoff_s, requests_per_minute=block.requests_per_minute,
                   tokens_per_minute=block.tokens_per_minute, display_name=block.model)

    # ------------------------------------------------------------ plumbing

    def redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limits = httpx.Limits(max_connections=self.max_concurrency)
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=self.timeout_s, limits=limits)

    def _run(self, work):
        """Run `work(client, semaphore, limiter)` to completion from synchronous code."""

        async def main():
            async with self._client() as client:
                return await work(client, asyncio.Semaphore(self.max_concurrency), RateLimiter(self.rpm, self.tpm))

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(main())
        with ThreadPoolExecutor(1) as pool:  # called from inside a running loop (a notebook)
            return pool.submit(asyncio.run, main()).result()

    def _wait(self, state) -> float:
        exc = state.outcome.exception()
        backoff = wait_random_exponential(multiplier=self.retry_backoff_s, max=60)(state)
        if isinstance(exc, ServerError) and exc.retry_after is not None:
            return min(exc.retry_after, 300.0)
        return backoff

    def _before_sleep(self, state) -> None:
        self.retries += 1
        log.info("retrying %s (attempt %d): %s", self.base_url, state.attempt_number,
                 self.redact(str(state.outcome.exception())))

    async def _post(self, client, sem, limiter, path: str, body: dict, tokens: int = 0) -> dict:
        """POST with retries; returns the JSON body or raises ServerError / httpx errors after the last attempt."""
        async for attempt in AsyncRetrying(stop=stop_after_attempt(self.max_retries + 1), wait=self._wait,
                                           retry=retry_if_exception(_retryable), before_sleep=self._before_sleep,
                                           reraise=True):
            with attempt:
                await limiter.acquire(tokens)
                async with sem:
                    resp = await client.post(path, json=body)
                if resp.status_code >= 400:
                    raise ServerError(f"HTTP {resp.status_code}: {self.redact(_error_text(resp))}",
                                      resp.status_code, _retry_after(resp))
                try:
                    data = resp.json()
                except ValueError:
                    raise ServerError(f"malformed JSON in the response to {path}") from None
                if not isinstance(data, dict):
                    raise ServerError(f"unexpected response to {path}: {type(data).__name__}, not an object")
                return data
        raise AssertionError("unreachable")

    def _fatal(self, exc: ServerError) -> EngineError:
        """401/403/404 mean the setup is wrong: say what to fix."""
        where = f"server {self.base_url}"
        if exc.status in (401, 403):
            fix = (f"set a valid API key in the environment variable {self.api_key_env}" if self._api_key
                   else f"the environment variable {self.api_key_env} is not set; export the API key there "
                        "(or name another variable with --api-key-env)")
            return EngineError(f"{where} refused the request ({exc}); {fix}")
        return EngineError(f"{where}: {exc}; check the model name ({self.model!r}: is it one the server serves? "
                           "see GET /v1/models) and the base URL (it usually ends with /v1)")

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, httpx.TimeoutException):
            text = f"timed out after {self.timeout_s:g} s"
        elif isinstance(exc, httpx.TransportError):
            text = f"connection error: {type(exc).__name__}: {exc}"
        else:
            text = str(exc)
        attempts = f" after {self.max_retries + 1} attempts" if _retryable(exc) else ""
        return self.redact(f"request to {self.base_url} failed{attempts}: {text}")[:500]

    # ------------------------------------------------------------ generate

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        async def work(client, sem, limiter):
            return await asyncio.gather(*(self._generate_one(client, sem, limiter, req, req.seed * 1_000_003 + i)
                                          for i, req in enumerate(requests)))

        return self._run(work)

    async def _generate_one(self, client, sem, limiter, req: GenerationRequest, seed: int) -> GenerationResult:
        p = req.params
        greedy = p.temperature == 0
        want = 1 if greedy else p.n
        try:
            completions, prompt_tokens = await self._sample(client, sem, limiter, req.prompt, p, want, seed)
            if len(completions) < want:
                if not self._warned_n:
                    log.warning("server %s returned %d of %d samples in one request (no support for n): asking for "
                                "the rest one request each", self.base_url, len(completions), want)
                    self._warned_n = True
                for k in range(len(completions), want):
                    more, _ = await self._sample(client, sem, limiter, req.prompt, p, 1, seed + k)
                    completions += more[:1]
        except ServerError as e:
            if e.status in (401, 403, 404):
                raise self._fatal(e) from None
            return GenerationResult(failure=self._describe(e))
        except (httpx.TransportError, KeyError, TypeError, IndexError, ValueError) as e:
            return GenerationResult(failure=self._describe(e if isinstance(e, httpx.TransportError)
                                                           else ServerError(f"malformed response: {e!r}")))
        if greedy and p.n > 1:
            completions = completions[:1] * p.n
        return GenerationResult(completions=completions, prompt_tokens=prompt_tokens)

    async def _sample(self, client, sem, limiter, prompt: PromptInput, p, n: int, seed: int):
        body = {"model": self.model, "n": n, "temperature": p.temperature, "top_p": p.top_p,
                "max_tokens": p.max_new_tokens, "seed": seed}
        if p.stop:
            body["stop"] = list(p.stop)
        estimate = _prompt_chars(prompt) // 4 + p.max_new_tokens * n
        chat = not isinstance(prompt, str)
        if chat:
            body.update(messages=prompt, logprobs=True)
        else:
            body.update(prompt=prompt, logprobs=0)
        data = await self._post(client, sem, limiter, "/chat/completions" if chat else "/completions", body, estimate)
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        usage = data.get("usage") or {}
        out = [self._completion(c, chat) for c in choices]
        unknown = [c for c in out if c.num_tokens < 0]
        if unknown:  # no per-token log-probs: share the usage count among the choices
            total = int(usage.get("completion_tokens") or 0)
            for k, c in enumerate(unknown):
                c.num_tokens = total // len(unknown) + (1 if k < total % len(unknown) else 0)
        return out, int(usage.get("prompt_tokens") or 0)

    @staticmethod
    def _completion(choice: dict, chat: bool) -> Completion:
        text = (choice["message"].get("content") or "") if chat else choice["text"]
        logprobs = choice.get("logprobs") or {}
        token_lps = ([t["logprob"] for t in logprobs.get("content") or []] if chat
                     else list(logprobs.get("token_logprobs") or []))
        finish = choice.get("finish_reason") or "stop"
        finish = finish if finish in ("stop", "length") else ("stop" if finish in ("eos", "stop_sequence") else "error")
        total = math.fsum(token_lps) if token_lps else None
        return Completion(text=text, num_tokens=len(token_lps) if token_lps else -1, finish_reason=finish,
                          logprob_sum=total if total is not None and math.isfinite(total) else None)

    # ------------------------------------------------------------ score / next token

    @property
    def _root(self) -> str:
        """The server root (vLLM's /tokenize lives beside /v1, not under it)."""
        return self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url

    def score(self, prompts: list[PromptInput], continuations: list[str]) -> list[list[float]]:
        """Per-token log-probs of each continuation after its prompt, from the server's prompt log-probs."""
        if len(prompts) != len(continuations):
            raise ValueError("score: prompts and continuations differ in length")

        async def work(client, sem, limiter):
            return await asyncio.gather(*(self._score_one(client, sem, limiter, i, p, c)
                                          for i, (p, c) in enumerate(zip(prompts, continuations))))

        return self._run(work)

    async def _tokenize(self, client, sem, limiter, prompt: PromptInput, special: bool) -> list[int]:
        body = {"model": self.model}
        if isinstance(prompt, str):
            body.update(prompt=prompt, add_special_tokens=special)
        else:
            body.update(messages=prompt, add_generation_prompt=True)
        try:
            data = await self._post(client, sem, limiter, f"{self._root}/tokenize", body)
            return list(data["tokens"])
        except ServerError as e:
            if e.status in (401, 403):
                raise self._fatal(e) from None
            if e.status in (404, 405):
                raise EngineError(f"server {self.base_url} cannot score continuations: it has no /tokenize endpoint "
                                  f"and gives no prompt log-probs (a vLLM server does); {NO_LOGPROBS_FIX}") from None
            raise

    async def _score_one(self, client, sem, limiter, row: int, prompt: PromptInput, continuation: str) -> list[float]:
        try:
            p_ids = await self._tokenize(client, sem, limiter, prompt, special=True)
            c_ids = await self._tokenize(client, sem, limiter, continuation, special=False)
            if not c_ids:
                return []
            body = {"model": self.model, "prompt": p_ids + c_ids, "max_tokens": 1, "temperature": 0,
                    "prompt_logprobs": 0}
            data = await self._post(client, sem, limiter, "/completions", body, len(p_ids) + len(c_ids) + 1)
        except (ServerError, httpx.TransportError) as e:
            if isinstance(e, ServerError) and e.status in (401, 403, 404):
                raise self._fatal(e) from None
            raise EngineError(f"score: row {row}: {self._describe(e)}") from None
        entries = (data.get("choices") or [{}])[0].get("prompt_logprobs")
        if not entries:
            raise EngineError(f"server {self.base_url} returned no prompt log-probs for model {self.model!r}: it "
                              f"cannot score continuations; {NO_LOGPROBS_FIX}")
        return [float(entry[str(tok)]["logprob"]) for entry, tok in zip(entries[len(p_ids):], c_ids)]

    def next_token_logprobs(self, prompts: list[PromptInput], tokens: list[str] | None = None,
                            top_k: int | None = None) -> list[dict[str, float]]:
        """Log-probs of the next token after each prompt (one generated token with `top_logprobs`).

        A requested token outside the server's top 20 gets -inf: servers return no more than that.
        """
        if not tokens and not top_k:
            raise ValueError("next_token_logprobs: give tokens or top_k")
        k = min(top_k or MAX_TOP_LOGPROBS, MAX_TOP_LOGPROBS)
        if tokens:
            k = MAX_TOP_LOGPROBS

        async def work(client, sem, limiter):
            return await asyncio.gather(*(self._next_token_one(client, sem, limiter, i, p, k)
                                          for i, p in enumerate(prompts)))

        out = []
        for top in self._run(work):
            d = dict(sorted(top.items(), key=lambda kv: -kv[1])[:top_k]) if top_k else {}
            for t in tokens or []:
                d[t] = top.get(t, float("-inf"))
            out.append(d)
        return out

    async def _next_token_one(self, client, sem, limiter, row: int, prompt: PromptInput, k: int) -> dict[str, float]:
        chat = not isinstance(prompt, str)
        body = {"model": self.model, "max_tokens": 1, "temperature": 0}
        if chat:
            body.update(messages=prompt, logprobs=True, top_logprobs=k)
        else:
            body.update(prompt=prompt, logprobs=k)
        try:
            data = await self._post(client, sem, limiter, "/chat/completions" if chat else "/completions", body,
                                    _prompt_chars(prompt) // 4 + 1)
        except (ServerError, httpx.TransportError) as e:
            if isinstance(e, ServerError) and e.status in (401, 403, 404):
                raise self._fatal(e) from None
            raise EngineError(f"next_token_logprobs: row {row}: {self._describe(e)}") from None
        try:
            logprobs = data["choices"][0].get("logprobs") or {}
            if chat:
                first = (logprobs.get("content") or [None])[0]
                top = {t["token"]: float(t["logprob"]) for t in (first or {}).get("top_logprobs") or []}
            else:
                top = {t: float(v) for t, v in ((logprobs.get("top_logprobs") or [None])[0] or {}).items()}
        except (KeyError, IndexError, TypeError, AttributeError):
            top = {}
        if not top:
            raise EngineError(f"server {self.base_url} returned no log-probs for model {self.model!r} (row {row}): "
                              f"it cannot give next-token log-probs; {NO_LOGPROBS_FIX}")
        return top

    eos_text = ""  # the server's tokenizer is not known here

    def prompt_text(self, chat: list[dict]) -> str:
        raise EngineError(f"the openai engine ({self.model_id!r}) cannot render the model's chat template locally: "
                          "continuing a rationale (judge.mode cot) needs a local engine (transformers, vllm); use "
                          "mode 'text' with a cot template instead")

    def close(self) -> None:
        """Nothing to release: each call opens and closes its own connection pool."""


def _prompt_chars(prompt: PromptInput) -> int:
    return len(prompt) if isinstance(prompt, str) else sum(len(m.get("content") or "") for m in prompt)


def _error_text(resp: httpx.Response) -> str:
    """The server's own error message (OpenAI shape `{"error": {"message": ...}}`), else the body's start."""
    try:
        body = resp.json()
        err = body.get("error") if isinstance(body, dict) else None
        message = err.get("message") if isinstance(err, dict) else (err or body.get("detail"))
        if message:
            return str(message)[:300]
    except (ValueError, AttributeError):
        pass
    return resp.text[:200] or resp.reason_phrase
