"""The judge protocol: what every judge returns, and the provenance every judgment carries.

Two shapes, because judges answer two different questions:
- a *scoring* judge (pointwise, likelihood, reward model, verifier) gives each candidate a number;
- a *pairwise* judge compares two candidates, in both orders.
Each works on a whole batch (across prompts), so the engine behind it stays busy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

from rlaif.records import Judgment


@dataclass(frozen=True)
class Provenance:
    """Which judge made a number: enough to trace it to the model and the template text."""

    judge_kind: str
    judge_model: str
    judge_engine: str
    template_name: str | None = None
    template_sha256: str | None = None

    def columns(self) -> dict:
        return asdict(self)


@dataclass
class CandidateItem:
    """One candidate to score: the chat that produced it, its text, and its row's other columns."""

    prompt: list[dict]
    text: str
    columns: dict


@dataclass
class PairItem:
    """Two candidates of one prompt to compare; `a`/`b` are their candidate indices."""

    prompt_id: str
    prompt: list[dict]
    a: int
    b: int
    text_a: str
    text_b: str


@dataclass
class Score:
    """One candidate's score; `failure` (with `raw_text` when text was parsed) when there is none."""

    score: float | None
    distribution: list[float] | None = None
    raw_text: str | None = None
    failure: str | None = None


@runtime_checkable
class ScoringJudge(Protocol):
    kind: str
    provenance: Provenance

    def score(self, items: list[CandidateItem]) -> list[Score]: ...


@runtime_checkable
class PairwiseJudge(Protocol):
    kind: str
    provenance: Provenance

    def compare(self, pairs: list[PairItem]) -> list[Judgment]: ...


def question_of(prompt: list[dict]) -> str:
    """The text a judge template shows as the question: the last user message."""
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]


def combine(p_a_first: float | None, p_b_first: float | None, tie_band: float) -> dict:
    """Both orders -> P(A>B) = (P("1"|A,B) + 1 - P("1"|B,A)) / 2, consistency and tie.

    Averaging the two orders cancels a constant pull towards either slot; a pair whose preferred
    side flips with the order is inconsistent.
    """
    if p_a_first is None or p_b_first is None:
        return {"preference": None, "consistent": None, "tie": None}
    preference = (p_a_first + 1.0 - p_b_first) / 2
    consistent = (p_a_first > 0.5) == (p_b_first < 0.5)
    return {"preference": preference, "consistent": consistent, "tie": abs(preference - 0.5) < tie_band}
