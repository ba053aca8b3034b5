"""The engine protocol: three batched primitives every stage and judge is built on.

- `generate(requests)`: n completions per request (text, token count, finish reason, sum log-prob).
- `score(prompts, continuations)`: teacher-forced log-probs of given continuation tokens.
- `next_token_logprobs(prompts, tokens=..., top_k=...)`: the next-token distribution after each
  prompt from one forward pass; judges read verdict tokens ("1"/"2", score digits) with it.
- `prompt_text(chat)`: the chat as the model reads it (its chat template), as raw text a judge can
  continue (local engines only), and `eos_text`, the end-of-sequence token's text ("" if unknown).

A prompt is either chat messages (the engine applies the model's chat template with the
generation prompt) or raw text (used as is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Union, runtime_checkable

from rlaif.errors import EngineError
from rlaif.records import SamplingParams

ChatPrompt = list[dict]
PromptInput = Union[str, ChatPrompt]


@dataclass
class GenerationRequest:
    prompt: PromptInput
    params: SamplingParams
    seed: int = 0


@dataclass
class Completion:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" | "length" | "error"
    logprob_sum: float | None = None


@dataclass
class GenerationResult:
    """The n completions of one request, or the reason it failed (then `completions` is empty)."""

    completions: list[Completion] = field(default_factory=list)
    failure: str | None = None
    prompt_tokens: int = 0
    retryable: bool = False  # the failure was transient (network, timeout, 5xx, malformed answer): a rerun retries it


@runtime_checkable
class Engine(Protocol):
    name: str  # "transformers" | "vllm" | "openai"
    model_id: str
    eos_text: str

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]: ...

    def score(self, prompts: list[PromptInput], continuations: list[str]) -> list[list[float]]: ...

    def next_token_logprobs(
        self, prompts: list[PromptInput], tokens: list[str] | None = None, top_k: int | None = None
    ) -> list[dict[str, float]]: ...

    def prompt_text(self, chat: ChatPrompt) -> str: ...

    def close(self) -> None: ...


class LocalTokenizer:
    """What the local engines (transformers, vLLM) share: they hold the model's tokenizer as `self.tokenizer`."""

    tokenizer: object
    model_id: str

    def encode(self, prompt: PromptInput) -> list[int]:
        return encode_prompt(self.tokenizer, prompt)

    def prompt_text(self, chat: ChatPrompt) -> str:
        return chat_text(self.tokenizer, chat)

    @property
    def eos_text(self) -> str:
        return self.tokenizer.eos_token or ""

    def token_id(self, token: str) -> int:
        return single_token_id(self.tokenizer, token, self.model_id)


def encode_prompt(tokenizer, prompt: PromptInput) -> list[int]:
    """Token ids of a prompt as local engines see it: chat messages through the model's chat template
    (with the generation prompt; the template adds its own special tokens), raw text as is."""
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def chat_text(tokenizer, chat: ChatPrompt) -> str:
    """A chat through the model's template (with the generation prompt) as raw text that encodes back to the
    same tokens: a BOS the tokenizer adds again on encoding is left out."""
    text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
        text = text[len(bos):]
    return text


def encode_prompts(tokenizer, prompts: list[PromptInput]) -> list[list[int]]:
    """`encode_prompt` for many prompts, tokenised in two batched calls (chat and raw text)."""
    chat = [k for k, p in enumerate(prompts) if not isinstance(p, str)]
    raw = [k for k, p in enumerate(prompts) if isinstance(p, str)]
    out: list[list[int]] = [[] for _ in prompts]
    if chat:
        texts = [tokenizer.apply_chat_template(prompts[k], add_generation_prompt=True, tokenize=False) for k in chat]
        for k, ids in zip(chat, tokenizer(texts, add_special_tokens=False)["input_ids"]):
            out[k] = ids
    if raw:
        for k, ids in zip(raw, tokenizer([prompts[k] for k in raw])["input_ids"]):
            out[k] = ids
    return out


def single_token_id(tokenizer, token: str, model_id: str) -> int:
    """The id of a verdict token; judges read one next-token distribution, so it must be one token."""
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise EngineError(f"{token!r} is {len(ids)} tokens for model {model_id!r}; verdict tokens must be single tokens")
    return ids[0]
