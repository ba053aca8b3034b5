"""Strict verdict parsing for text judges: exactly one allowed value, or a recorded failure.

No silent guesses: a preamble without a `Verdict:`/`Score:` line, two verdicts, or a value outside
the allowed set is a parse failure, not "the first digit we found".
"""

from __future__ import annotations

import math
import re

from rlaif.engines import GenerationRequest
from rlaif.records import SamplingParams

_LINE = re.compile(r"^\s*(?:final\s+)?(?:verdict|score|answer|rating)\s*[:=]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


def parse_verdict(text: str, allowed: list[str]) -> tuple[str | None, str | None]:
    """(verdict, None) or (None, why it failed).

    Accepted: the whole reply is one allowed value, or the reply has exactly one
    `Verdict: X` (also `Score:`, `Rating:`, `Answer:`) line whose value is allowed.
    """
    stripped = text.strip().rstrip(".")
    if stripped in allowed:
        return stripped, None
    found = [m.group(1).rstrip(".").strip() for m in _LINE.finditer(text)]
    if not found:
        return None, f"no verdict: expected exactly one of {allowed} or a 'Verdict: X' line"
    if len(found) > 1:
        return None, f"{len(found)} verdict lines ({', '.join(found[:4])}); expected exactly one"
    if found[0] not in allowed:
        return None, f"verdict {found[0]!r} is not one of {allowed}"
    return found[0], None


def normalise(logprobs: dict[str, float], tokens: list[str]) -> list[float] | None:
    """Probabilities of `tokens` renormalised to sum to 1 (None if the model gives them no mass)."""
    values = [logprobs.get(t, -math.inf) for t in tokens]
    top = max(values)
    if not math.isfinite(top):
        return None
    weights = [math.exp(v - top) for v in values]
    total = sum(weights)
    return [w / total for w in weights]


def ask_for_verdicts(engine, chats: list, verdicts: list[str], *, retries: int, max_new_tokens: int,
                     seed: int) -> list[tuple[str | None, str | None, str | None]]:
    """Generate a verdict per chat and parse it strictly; re-ask the failures up to `retries` times.

    Re-asks are sampled (temperature 1, seed + attempt): a greedy re-ask would repeat the same answer.
    Returns (verdict, raw text, failure) per chat: a failure is recorded with the raw text, never raised.
    """
    out: list[tuple[str | None, str | None, str | None]] = [(None, None, "not judged")] * len(chats)
    todo = list(range(len(chats)))
    for attempt in range(retries + 1):
        params = SamplingParams(n=1, temperature=0.0 if attempt == 0 else 1.0, max_new_tokens=max_new_tokens)
        results = engine.generate([GenerationRequest(chats[i], params, seed + attempt) for i in todo])
        still = []
        for i, result in zip(todo, results):
            if result.failure or not result.completions:
                out[i] = (None, out[i][1], f"engine: {result.failure}")
                still.append(i)
                continue
            raw = result.completions[0].text
            verdict, why = parse_verdict(raw, verdicts)
            if verdict is None:
                out[i] = (None, raw, f"parse failed after {attempt + 1} attempt(s): {why}")
                still.append(i)
            else:
                out[i] = (verdict, raw, None)
        todo = still
        if not todo:
            break
    return out
