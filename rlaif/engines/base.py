"""The engine protocol: three batched primitives every stage and judge is built on.

- `generate(requests)`: n completions per request (text, token count, finish reason, sum log-prob).
- `score(prompts, continuations)`: teacher-forced log-probs of given continuation tokens.
- `next_token_logprobs(prompts, tokens=..., top_k=...)`: the next-token distribution after each
  prompt from one forward pass; judges read verdict tokens ("1"/"2", score digits) with it.

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


@runtime_checkable
class Engine(Protocol):
    name: str  # "transformers" | "vllm" | "openai"
    model_id: str

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]: ...

    def score(self, prompts: list[PromptInput], continuations: list[str]) -> list[list[float]]: ...

    def next_token_logprobs(
        self, prompts: list[PromptInput], tokens: list[str] | None = None, top_k: int | None = None
    ) -> list[dict[str, float]]: ...

    def close(self) -> None: ...


def encode_prompt(tokenizer, prompt: PromptInput) -> list[int]:
    """Token ids of a prompt as local engines see it: chat messages through the model's chat template
    (with the generation prompt; the template adds its own special tokens), raw text as is."""
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


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
