"""From the judged candidates of one prompt to preference pairs: ranking, pair strategies, orientation.

A strategy proposes pairs of candidates from the ranking (best first); `orient` then decides which
side is chosen and how strongly, from the pairwise comparison of the two when the judge made one
(soft preference, both orders), else from their scores. Ties (equal scores, or a soft preference
within the tie band) are reported as ties and never become pairs.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["best-vs-worst", "best-vs-random", "all-above-margin", "top-k-vs-bottom-k"]
STRATEGIES: tuple[str, ...] = ("best-vs-worst", "best-vs-random", "all-above-margin", "top-k-vs-bottom-k")


@dataclass(frozen=True)
class Comparison:
    """A pairwise verdict of candidates (a, b): P(a > b), both-order consistency, the judge's tie flag."""

    preference: float
    consistent: bool | None
    tie: bool | None


@dataclass(frozen=True)
class Oriented:
    chosen: int  # candidate indices
    rejected: int
    margin: float  # 2 P(chosen > rejected) - 1 from a comparison; else the score gap
    preference: float | None  # P(chosen > rejected) when a comparison decided it
    consistent: bool | None
    tie: bool


def rank_order(candidates: list[dict]) -> list[dict]:
    """Best first: by the judge's rank when given (0 = best), then by score, then by index (stable)."""
    def key(c):
        rank = c.get("rank")
        score = c.get("score")
        return (rank is None, rank if rank is not None else 0, -(score if score is not None else float("-inf")),
                c["candidate_index"])

    return sorted(candidates, key=key)


def propose(ranked: list[dict], strategy: str, *, top_k: int = 1, score_tie: float = 0.0,
            rng: random.Random | None = None) -> list[tuple[dict, dict]]:
    """Candidate pairs (better-ranked first) that the strategy asks the filters to consider."""
    if len(ranked) < 2:
        return []
    if strategy == "best-vs-worst":
        return [(ranked[0], ranked[-1])]
    if strategy == "best-vs-random":
        rng = rng or random.Random(0)
        best = ranked[0]
        distinct = [c for c in ranked[1:] if c.get("score") is None or best.get("score") is None
                    or abs(best["score"] - c["score"]) > score_tie]
        return [(best, rng.choice(distinct or ranked[1:]))]
    if strategy == "all-above-margin":
        return list(itertools.combinations(ranked, 2))
    if strategy == "top-k-vs-bottom-k":
        k = max(1, min(top_k, len(ranked) // 2))
        return [(a, b) for a in ranked[:k] for b in ranked[-k:]]
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")


def orient(first: dict, second: dict, comparisons: dict[tuple[int, int], Comparison], *,
           tie_band: float, score_tie: float) -> Oriented:
    """Decide chosen/rejected for a proposed pair: the direct comparison wins over the ranking."""
    a, b = first["candidate_index"], second["candidate_index"]
    comp = comparisons.get((a, b))
    if comp is None and (b, a) in comparisons:
        c = comparisons[(b, a)]
        comp = Comparison(1.0 - c.preference, c.consistent, c.tie)
    if comp is not None:
        tie = bool(comp.tie) or abs(comp.preference - 0.5) < tie_band
        if comp.preference >= 0.5:
            return Oriented(a, b, 2 * comp.preference - 1, comp.preference, comp.consistent, tie)
        return Oriented(b, a, 1 - 2 * comp.preference, 1 - comp.preference, comp.consistent, tie)
    sa, sb = first.get("score"), second.get("score")
    if sa is None or sb is None:  # ranked without scores: trust the rank, with no margin to report
        return Oriented(a, b, 0.0, None, None, False)
    gap = sa - sb
    if gap >= 0:
        return Oriented(a, b, gap, None, None, abs(gap) <= score_tie)
    return Oriented(b, a, -gap, None, None, abs(gap) <= score_tie)


def repeated_ngram_ratio(text: str, n: int = 3, min_ngrams: int = 8) -> float:
    """Share of repeated n-grams (1 - unique/total), over words, or characters for short texts.

    0 for texts too short to judge: a short answer is never called degenerate.
    """
    units: list[str] = text.split()
    if len(units) < min_ngrams + n - 1:
        units = list(text.strip())
    total = len(units) - n + 1
    if total < min_ngrams:
        return 0.0
    grams = {tuple(units[i:i + n]) for i in range(total)}
    return 1.0 - len(grams) / total


def pairs_of_prompt(ranked: list[dict], comparisons: dict[tuple[int, int], Comparison], *, strategy: str,
                    top_k: int, tie_band: float, score_tie: float, rng: random.Random) -> list[tuple[Oriented, dict, dict]]:
    """Proposed and oriented pairs of one prompt, each with its chosen and rejected candidate rows."""
    by_index = {c["candidate_index"]: c for c in ranked}
    out = []
    for first, second in propose(ranked, strategy, top_k=top_k, score_tie=score_tie, rng=rng):
        o = orient(first, second, comparisons, tie_band=tie_band, score_tie=score_tie)
        out.append((o, by_index[o.chosen], by_index[o.rejected]))
    return out
