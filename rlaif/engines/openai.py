"""Any OpenAI-compatible server (`vllm serve`, TGI, llama.cpp, SGLang, hosted APIs) behind the engine protocol.

Why it looks like this:
- The HTTP side (retries, rate limits, errors without the key) is rlaif/engines/openai_http.py.
  A request that still fails after its retries is recorded on its rows and the run goes on;
  401/403/404 stop the run at once with what to fix; a 400 is the request's own fault: recorded
  on its rows, not retried.
- With a call ledger (rlaif/engines/ledger.py, given by the stage) every completed answer is
  committed before it is used, and looked up before anything is sent: a rerun after a kill or a
  failure sends only what is missing. Keys are per sample, so N samples stay N answers.
- `batch=True` sends generation through OpenAI's Batch API (rlaif/engines/batch.py).
- Chat prompts go to `/chat/completions`, text prompts to `/completions`. `n` samples are one
  request; a server that returns fewer choices gets the rest as single requests (said once).
- `score` needs prompt log-probs, which vLLM gives: rows are tokenised in batches with the model's
  own tokenizer when the model is a local directory (else each distinct text once by the server's
  `/tokenize`), and many prompt + continuation rows go as token-id lists in one `/completions`
  request with `prompt_logprobs`, so the numbers match the local engines token for token.
- `next_token_logprobs` generates one token with `top_logprobs` (up to 20), which chat-only hosted
  APIs also give.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from dataclasses import dataclass

import httpx

from rlaif.engines.base import Completion, GenerationRequest, GenerationResult, PromptInput, encode_prompts
from rlaif.engines.batch import BatchDriver
from rlaif.engines.ledger import LedgerKey, Stored, make_key
from rlaif.engines.openai_http import DEFAULT_BASE_URL, OpenAIClient, ServerError, retryable
from rlaif.errors import EngineError

__all__ = ["DEFAULT_BASE_URL", "OpenAIEngine", "ServerError"]

log = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20  # the most OpenAI-compatible servers return per position
NO_LOGPROBS_FIX = "use a judge that parses the generated text instead of reading log-probs (a text-parsing judge)"
SCORE_ROWS_PER_REQUEST = 32  # prompt + continuation rows in one /completions request (vLLM takes a list)


@dataclass
class Plan:
    """The samples one generation request needs: their ledger keys, and the request's seed."""

    req: GenerationRequest
    seed: int
    keys: list[LedgerKey]


class OpenAIEngine(OpenAIClient):
    name = "openai"

    def __init__(self, model: str, *, display_name: str | None = None, batch: bool = False,
                 batch_poll_s: float = 10.0, batch_poll_max_s: float = 300.0, tokenizer: str | None = None,
                 **connection):
        """`connection`: base_url, api_key_env, max_concurrency, timeout_s, max_retries, retry_backoff_s,
        requests_per_minute, tokens_per_minute, ledger (see OpenAIClient). `tokenizer`: a local tokenizer
        directory for `score` ("" = always the server's /tokenize; default: `model` when it is a directory)."""
        super().__init__(model, **connection)
        self.model_id = display_name or model
        self.batch, self.batch_poll_s, self.batch_poll_max_s = batch, batch_poll_s, batch_poll_max_s
        self.n_ignored = False  # the server gave fewer choices than `n` asked: ask one request per sample
        self._score_rows = SCORE_ROWS_PER_REQUEST
        self.tokenizer_path, self._tokenizer = tokenizer, None

    @classmethod
    def from_block(cls, block, model: str, field: str = "generate") -> "OpenAIEngine":
        return cls(model, base_url=block.base_url, api_key_env=block.api_key_env,
                   max_concurrency=block.max_concurrency, timeout_s=block.timeout_s, max_retries=block.max_retries,
                   retry_backoff_s=block.retry_backoff_s, requests_per_minute=block.requests_per_minute,
                   tokens_per_minute=block.tokens_per_minute, display_name=block.model,
                   batch=getattr(block, "batch", False), batch_poll_s=getattr(block, "batch_poll_s", 10.0),
                   batch_poll_max_s=getattr(block, "batch_poll_max_s", 300.0))

    # ------------------------------------------------------------ generate

    def plan(self, requests: list[GenerationRequest]) -> list[Plan]:
        """The ledger keys of every sample a call needs; a request's seed is derived from its position."""
        plans = []
        for i, req in enumerate(requests):
            seed = req.seed * 1_000_003 + i
            want = 1 if req.params.temperature == 0 else req.params.n  # greedy: one answer, repeated
            endpoint, body, _, _ = self.request_body(req.prompt, req.params, 1, seed)
            plans.append(Plan(req, seed, [make_key(self.model, self.base_url, endpoint, body, j, self.model_id)
                                          for j in range(want)]))
        return plans

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if self.batch:
            return BatchDriver(self).run([requests])[0]
        plans = self.plan(requests)
        found = self._lookup([k for pl in plans for k in pl.keys])

        async def work(client, sem):
            return await asyncio.gather(*(self._generate_one(client, sem, pl, found) for pl in plans))

        return self.run(work)

    def prefetch(self, calls: list[list[GenerationRequest]], progress: bool = True) -> None:
        """Answer several `generate` calls ahead into the ledger (one Batch API job for all of them)."""
        BatchDriver(self, progress=progress).run(calls)

    def result(self, plan: Plan, found: dict[str, Stored]) -> GenerationResult | None:
        """The answer to a planned request from stored answers alone, or None while a sample is missing."""
        if not all(k.key in found for k in plan.keys):
            return None
        completions = [self.decode(found[k.key]) for k in plan.keys]
        prompt_tokens = int(((found[plan.keys[0].key].response.get("usage") or {}).get("prompt_tokens")) or 0)
        if plan.req.params.temperature == 0 and plan.req.params.n > 1:
            completions = completions[:1] * plan.req.params.n
        return GenerationResult(completions=completions, prompt_tokens=prompt_tokens)

    def decode(self, stored: Stored) -> Completion:
        c = self._completion(stored.response["choice"], stored.response["chat"])
        if c.num_tokens < 0:
            c.num_tokens = stored.completion_tokens
        return c

    async def _generate_one(self, client, sem, plan: Plan, found: dict[str, Stored]) -> GenerationResult:
        try:
            missing = [j for j, k in enumerate(plan.keys) if k.key not in found]
            if missing and not self.n_ignored:
                missing = missing[await self._sample(client, sem, plan, missing, found):]
                if missing and not self.n_ignored:
                    log.warning("server %s returned fewer samples than `n` asked in one request (no support for "
                                "n): asking for the rest one request each", self.base_url)
                    self.n_ignored = True
            for j in missing:
                if not await self._sample(client, sem, plan, [j], found):
                    raise ServerError("malformed response: no choices")
        except ServerError as e:
            if e.status in (401, 403, 404):
                raise self.fatal(e) from None
            return GenerationResult(failure=self.describe(e), retryable=retryable(e))
        except (httpx.TransportError, KeyError, TypeError, IndexError, ValueError) as e:
            return GenerationResult(failure=self.describe(e if isinstance(e, httpx.TransportError)
                                                           else ServerError(f"malformed response: {e!r}")),
                                    retryable=True)
        return self.result(plan, found)

    def request_body(self, prompt: PromptInput, p, n: int, seed: int) -> tuple[str, dict, bool, int]:
        """Endpoint, JSON body, whether it is chat, and an estimate of its tokens (for the rate limiter)."""
        body = {"model": self.model, "n": n, "temperature": p.temperature, "top_p": p.top_p,
                "max_tokens": p.max_new_tokens, "seed": seed}
        if p.stop:
            body["stop"] = list(p.stop)
        chat = not isinstance(prompt, str)
        if chat:
            body.update(messages=prompt, logprobs=True)
        else:
            body.update(prompt=prompt, logprobs=0)
        estimate = _prompt_chars(prompt) // 4 + p.max_new_tokens * n
        return ("/chat/completions" if chat else "/completions"), body, chat, estimate

    async def _sample(self, client, sem, plan: Plan, samples: list[int], found: dict[str, Stored]) -> int:
        """Ask for `samples` of a planned request in one request; commit and return how many came back."""
        endpoint, body, chat, estimate = self.request_body(plan.req.prompt, plan.req.params, len(samples),
                                                           plan.seed + samples[0])
        data = await self.request(client, sem, "POST", endpoint, json_body=body, tokens=estimate)
        answers = self.answers(data, chat, [plan.keys[j] for j in samples])
        self._store(answers)
        found.update({k.key: Stored(resp, pt, ct) for k, resp, pt, ct in answers})
        return len(answers)

    def answers(self, data: dict, chat: bool, keys: list[LedgerKey]) -> list[tuple[LedgerKey, dict, int, int]]:
        """Ledger answers `(key, response, prompt_tokens, completion_tokens)` of one response, one per choice.

        The prompt is billed once, on the first sample; a choice without per-token log-probs gets its
        share of the usage's completion tokens.
        """
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))[:len(keys)]
        usage = data.get("usage") or {}
        out = [self._completion(c, chat) for c in choices]
        unknown = [c for c in out if c.num_tokens < 0]
        if unknown:
            total = int(usage.get("completion_tokens") or 0)
            for k, c in enumerate(unknown):
                c.num_tokens = total // len(unknown) + (1 if k < total % len(unknown) else 0)
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        return [(key, {"choice": choice, "chat": chat, "usage": usage}, prompt_tokens if i == 0 else 0, c.num_tokens)
                for i, (key, choice, c) in enumerate(zip(keys, choices, out))]

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
        """Per-token log-probs of each continuation after its prompt, from the server's prompt log-probs.

        Each distinct prompt and continuation is tokenised once; the rows the ledger does not hold go
        as token-id lists, many per `/completions` request (one per request if the server refuses lists).
        """
        if len(prompts) != len(continuations):
            raise ValueError("score: prompts and continuations differ in length")

        tok = self.local_tokenizer()
        local = None if tok is None else list(zip(encode_prompts(tok, prompts),
                                                  tok(list(continuations), add_special_tokens=False)["input_ids"]))

        async def work(client, sem):
            rows = local or await self._tokenize_rows(client, sem, prompts, continuations)
            keys = [make_key(self.model, self.base_url, "/completions", _score_body(self.model, p_ids + c_ids), 0,
                             self.model_id) if c_ids else None for p_ids, c_ids in rows]
            found = self._lookup([k for k in keys if k is not None])
            todo = list({k.key: i for i, k in enumerate(keys) if k is not None and k.key not in found}.values())
            chunks = [todo[s:s + self._score_rows] for s in range(0, len(todo), self._score_rows)]
            await asyncio.gather(*(self._score_rows_in(client, sem, chunk, rows, keys, found) for chunk in chunks))
            return [found[k.key].response["logprobs"] if k is not None else [] for k in keys]

        return self.run(work)

    def local_tokenizer(self):
        """The model's own tokenizer when `model` is a local directory (the server serves that directory):
        `score` then tokenises in batches here instead of one `/tokenize` request per text."""
        if self._tokenizer is None:
            self._tokenizer = False
            path = self.tokenizer_path if self.tokenizer_path is not None else self.model
            if path and os.path.isfile(os.path.join(path, "tokenizer_config.json")):
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(path)
        return self._tokenizer or None

    async def _tokenize_rows(self, client, sem, prompts, continuations) -> list[tuple[list[int], list[int]]]:
        """Token ids of every row by the server's `/tokenize`, each distinct text once."""
        texts = {("p", _text_key(p)): (p, True) for p in prompts} | {("c", c): (c, False) for c in continuations}
        ids = dict(zip(texts, await asyncio.gather(*(self._tokenize(client, sem, t, special)
                                                     for t, special in texts.values()))))
        return [(ids["p", _text_key(p)], ids["c", c]) for p, c in zip(prompts, continuations)]

    async def _tokenize(self, client, sem, prompt: PromptInput, special: bool) -> list[int]:
        body = {"model": self.model}
        if isinstance(prompt, str):
            body.update(prompt=prompt, add_special_tokens=special)
        else:
            body.update(messages=prompt, add_generation_prompt=True)
        try:
            data = await self.request(client, sem, "POST", f"{self._root}/tokenize", json_body=body)
            return list(data["tokens"])
        except ServerError as e:
            if e.status in (401, 403):
                raise self.fatal(e) from None
            if e.status in (404, 405):
                raise EngineError(f"server {self.base_url} cannot score continuations: it has no /tokenize endpoint "
                                  f"and gives no prompt log-probs (a vLLM server does); {NO_LOGPROBS_FIX}") from None
            raise EngineError(f"score: {self.describe(e)}") from None
        except httpx.TransportError as e:
            raise EngineError(f"score: {self.describe(e)}") from None

    async def _score_rows_in(self, client, sem, chunk: list[int], rows, keys, found) -> None:
        """Score `chunk` (row indices) in one request; commit each row's continuation log-probs."""
        seqs = [rows[i][0] + rows[i][1] for i in chunk]
        body = _score_body(self.model, seqs if len(seqs) > 1 else seqs[0])
        try:
            data = await self.request(client, sem, "POST", "/completions", json_body=body,
                                      tokens=sum(len(q) + 1 for q in seqs))
            choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        except ServerError as e:
            if e.status in (401, 403, 404):
                raise self.fatal(e) from None
            if not (e.status == 400 and len(chunk) > 1):
                raise EngineError(f"score: row {chunk[0]}: {self.describe(e)}") from None
            choices = []
        except httpx.TransportError as e:
            raise EngineError(f"score: row {chunk[0]}: {self.describe(e)}") from None
        if len(chunk) > 1 and len(choices) != len(chunk):  # no list prompts here: one row per request
            log.warning("server %s does not score a list of prompts in one request: one row per request",
                        self.base_url)
            self._score_rows = 1
            await asyncio.gather(*(self._score_rows_in(client, sem, [i], rows, keys, found) for i in chunk))
            return
        answers = []
        for i, choice in zip(chunk, choices):
            entries = choice.get("prompt_logprobs")
            if not entries:
                raise EngineError(f"server {self.base_url} returned no prompt log-probs for model {self.model!r}: "
                                  f"it cannot score continuations; {NO_LOGPROBS_FIX}")
            p_ids, c_ids = rows[i]
            logprobs = [float(entry[str(tok)]["logprob"]) for entry, tok in zip(entries[len(p_ids):], c_ids)]
            answers.append((keys[i], {"logprobs": logprobs}, len(p_ids) + len(c_ids), 1))
        self._store(answers)
        found.update({k.key: Stored(resp, pt, ct) for k, resp, pt, ct in answers})

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
        calls = []
        for p in prompts:
            chat = not isinstance(p, str)
            body = {"model": self.model, "max_tokens": 1, "temperature": 0}
            body.update(dict(messages=p, logprobs=True, top_logprobs=k) if chat else dict(prompt=p, logprobs=k))
            endpoint = "/chat/completions" if chat else "/completions"
            calls.append((endpoint, body, chat, make_key(self.model, self.base_url, endpoint, body, 0, self.model_id)))
        found = self._lookup([c[3] for c in calls])

        async def work(client, sem):
            first = {c[3].key: i for i, c in reversed(list(enumerate(calls)))}  # identical prompts: one request
            tops = dict(zip(first, await asyncio.gather(*(self._next_token_one(client, sem, i, prompts[i], calls[i],
                                                                               found) for i in first.values()))))
            return [tops[c[3].key] for c in calls]

        out = []
        for top in self.run(work):
            d = dict(sorted(top.items(), key=lambda kv: -kv[1])[:top_k]) if top_k else {}
            for t in tokens or []:
                d[t] = top.get(t, float("-inf"))
            out.append(d)
        return out

    async def _next_token_one(self, client, sem, row: int, prompt: PromptInput, call, found) -> dict[str, float]:
        endpoint, body, chat, key = call
        if key.key in found:
            data = found[key.key].response
        else:
            try:
                data = await self.request(client, sem, "POST", endpoint, json_body=body,
                                          tokens=_prompt_chars(prompt) // 4 + 1)
            except (ServerError, httpx.TransportError) as e:
                if isinstance(e, ServerError) and e.status in (401, 403, 404):
                    raise self.fatal(e) from None
                raise EngineError(f"next_token_logprobs: row {row}: {self.describe(e)}") from None
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
        if key.key not in found:
            usage = data.get("usage") or {}
            self._store([(key, data, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))])
        return top

    eos_text = ""  # the server's tokenizer is not known here

    def prompt_text(self, chat: list[dict]) -> str:
        raise EngineError(f"the openai engine ({self.model_id!r}) cannot render the model's chat template locally: "
                          "continuing a rationale (judge.mode cot) needs a local engine (transformers, vllm); use "
                          "mode 'text' with a cot template instead")

    def close(self) -> None:
        """Nothing to release: each call opens and closes its own connection pool."""


def _score_body(model: str, prompt) -> dict:
    return {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0}


def _text_key(prompt: PromptInput) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def _prompt_chars(prompt: PromptInput) -> int:
    return len(prompt) if isinstance(prompt, str) else sum(len(m.get("content") or "") for m in prompt)
