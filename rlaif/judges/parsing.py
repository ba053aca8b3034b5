"""Strict verdict parsing for text judges: exactly one allowed value, or a recorded failure.

No silent guesses: a preamble without a `Verdict:`/`Score:` line, two verdicts, or a value outside
the allowed set is a parse failure, not "the first digit we found".
"""

from __future__ import annotations

import math
import re

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
