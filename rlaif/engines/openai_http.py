"""The HTTP side of an OpenAI-compatible server: retries, the rate limiter, the ledger, errors without the key.

Why it looks like this:
- Plain `httpx` + asyncio: a semaphore bounds the requests in flight; the rate limiter
  (rlaif/engines/ratelimit.py) starts from the configured requests/min and tokens/min and learns
  the server's budget from its `x-ratelimit-*` headers and `Retry-After`; a request takes its slot
  first, then waits for the limiter, so what the limiter books is what is sent.
- tenacity retries 429, 5xx, connection errors, timeouts and malformed bodies with jittered
  exponential backoff (a `Retry-After` header wins), a bounded number of times.
- The API key is read from the environment variable named in the config and goes only into the
  Authorization header; every message that leaves here is scrubbed of it (`redact`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from rlaif.engines.ledger import CallLedger, LedgerKey, Stored
from rlaif.engines.ratelimit import RateLimiter, retry_after
from rlaif.errors import EngineError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class ServerError(Exception):
    """An HTTP error status, or a body that is not the JSON we asked for."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def retryable(exc: BaseException) -> bool:
    if isinstance(exc, ServerError):
        return exc.status is None or exc.status == 429 or exc.status >= 500
    return isinstance(exc, httpx.TransportError)  # connection refused/reset, closed mid-response, timeouts


class OpenAIClient:
    """Connection settings and one retried, rate-limited, ledgered way to call the server."""

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 max_concurrency: int = 8, timeout_s: float = 60.0, max_retries: int = 5,
                 retry_backoff_s: float = 1.0, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, ledger: CallLedger | None = None):
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) or None
        self.max_concurrency, self.timeout_s = max_concurrency, timeout_s
        self.max_retries, self.retry_backoff_s = max_retries, retry_backoff_s
        self.limiter = RateLimiter(requests_per_minute, tokens_per_minute)  # learned limits outlive one call
        self.ledger = ledger
        self.retries = 0  # retried attempts in this client's life (reported by the benchmark and tests)

    def redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limits = httpx.Limits(max_connections=self.max_concurrency)
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=self.timeout_s, limits=limits)

    def run(self, work):
        """Run `work(client, semaphore)` to completion from synchronous code."""

        async def main():
            async with self._client() as client:
                return await work(client, asyncio.Semaphore(self.max_concurrency))

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

    async def request(self, client, sem, method: str, path: str, *, json_body: dict | None = None,
                      files=None, data=None, tokens: int = 0, text: bool = False):
        """One call with retries and the rate limiter; the JSON object (or text) of the answer, else raises
        ServerError / httpx errors after the last attempt."""
        async for attempt in AsyncRetrying(stop=stop_after_attempt(self.max_retries + 1), wait=self._wait,
                                           retry=retry_if_exception(retryable), before_sleep=self._before_sleep,
                                           reraise=True):
            with attempt:
                async with sem:  # a slot first, then the limiter's go: what it books is what is sent
                    ticket = await self.limiter.acquire(tokens)
                    try:
                        resp = await client.request(method, path, json=json_body, files=files, data=data)
                    except httpx.TransportError:
                        self.limiter.release(ticket)
                        raise
                self.limiter.observe(ticket, resp.status_code, resp.headers)
                if resp.status_code >= 400:
                    raise ServerError(f"HTTP {resp.status_code}: {self.redact(_error_text(resp))}",
                                      resp.status_code, retry_after(resp.headers))
                if text:
                    return resp.text
                try:
                    body = resp.json()
                except ValueError:
                    raise ServerError(f"malformed JSON in the response to {path}") from None
                if not isinstance(body, dict):
                    raise ServerError(f"unexpected response to {path}: {type(body).__name__}, not an object")
                return body
        raise AssertionError("unreachable")

    def _lookup(self, keys: list[LedgerKey]) -> dict[str, Stored]:
        return self.ledger.lookup(keys) if self.ledger is not None and keys else {}

    def _store(self, answers: list[tuple[LedgerKey, dict, int, int]]) -> None:
        if self.ledger is not None and answers:
            self.ledger.store(answers)

    def fatal(self, exc: ServerError) -> EngineError:
        """401/403/404 mean the setup is wrong: say what to fix."""
        where = f"server {self.base_url}"
        if exc.status in (401, 403):
            fix = (f"set a valid API key in the environment variable {self.api_key_env}" if self._api_key
                   else f"the environment variable {self.api_key_env} is not set; export the API key there "
                        "(or name another variable with --api-key-env)")
            return EngineError(f"{where} refused the request ({exc}); {fix}")
        return EngineError(f"{where}: {exc}; check the model name ({self.model!r}: is it one the server serves? "
                           "see GET /v1/models) and the base URL (it usually ends with /v1)")

    def describe(self, exc: BaseException) -> str:
        if isinstance(exc, httpx.TimeoutException):
            text = f"timed out after {self.timeout_s:g} s"
        elif isinstance(exc, httpx.TransportError):
            text = f"connection error: {type(exc).__name__}: {exc}"
        else:
            text = str(exc)
        attempts = f" after {self.max_retries + 1} attempts" if retryable(exc) else ""
        return self.redact(f"request to {self.base_url} failed{attempts}: {text}")[:500]


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
