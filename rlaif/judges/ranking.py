"""N candidates per prompt -> comparisons -> per-candidate strengths and a ranking.

Schedules: `all-pairs` (N(N-1)/2 pairs, each asked in both orders by the judge), `pivot` (each
candidate vs candidate 0: N-1 pairs), `knockout` (winners advance: N-1 pairs, in rounds). Every
round is batched across all prompts, so the engine sees one large batch, not N small ones.
Strengths are a Bradley-Terry fit on the soft preferences (a small Gaussian prior keeps them finite
when one candidate wins everything); Copeland (wins minus losses, ties half) is the fallback.
"""

from __future__ import annotations

import logging
from itertools import combinations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from rlaif.judges.base import PairItem
from rlaif.records import Judgment

log = logging.getLogger(__name__)


def schedule_pairs(indices: list[int], schedule: str) -> list[tuple[int, int]]:
    """The first round of comparisons for one prompt's candidates."""
    if schedule == "all-pairs":
        return list(combinations(indices, 2))
    if schedule == "pivot":
        return [(indices[0], j) for j in indices[1:]]
    if schedule == "knockout":
        return list(zip(indices[0::2], indices[1::2]))
    raise ValueError(f"unknown schedule {schedule!r}; expected all-pairs, pivot or knockout")


def bradley_terry(n: int, comparisons: list[tuple[int, int, float]], prior: float = 0.01) -> np.ndarray:
    """Maximum a posteriori strengths s (mean 0): P(i > j) = sigmoid(s_i - s_j), fitted to soft labels p_ij."""
    if not comparisons:
        return np.zeros(n)
    i = np.array([c[0] for c in comparisons])
    j = np.array([c[1] for c in comparisons])
    p = np.clip(np.array([c[2] for c in comparisons], dtype=float), 0.0, 1.0)

    def loss(s):
        d = s[i] - s[j]
        value = -(p * log_expit(d) + (1 - p) * log_expit(-d)).sum() + prior / 2 * (s @ s)
        g = -(p - expit(d))
        grad = np.bincount(i, g, minlength=n) - np.bincount(j, g, minlength=n) + prior * s
        return value, grad

    result = minimize(loss, np.zeros(n), jac=True, method="L-BFGS-B")
    if not result.success:
        raise RuntimeError(f"Bradley-Terry fit did not converge: {result.message}")
    return result.x - result.x.mean()


def copeland(n: int, comparisons: list[tuple[int, int, float]], tie_band: float = 0.05) -> np.ndarray:
    """Wins minus losses; a preference within the tie band counts half each way (i.e. zero)."""
    score = np.zeros(n)
    for a, b, p in comparisons:
        if abs(p - 0.5) < tie_band:
            continue
        win = 1.0 if p > 0.5 else -1.0
        score[a] += win
        score[b] -= win
    return score


def ranks_of(strengths: np.ndarray) -> list[int]:
    """0 = strongest; equal strengths keep the lower candidate index first."""
    order = sorted(range(len(strengths)), key=lambda k: (-strengths[k], k))
    ranks = [0] * len(strengths)
    for r, k in enumerate(order):
        ranks[k] = r
    return ranks


def fit_strengths(n: int, comparisons: list[tuple[int, int, float]], method: str = "bradley-terry",
                  tie_band: float = 0.05) -> tuple[np.ndarray, str]:
    """Strengths and the method that produced them (Copeland when the Bradley-Terry fit fails)."""
    if method == "bradley-terry":
        try:
            return bradley_terry(n, comparisons), "bradley-terry"
        except (RuntimeError, ValueError, FloatingPointError) as e:
            log.warning("%s; falling back to Copeland", e)
    return copeland(n, comparisons, tie_band), "copeland"


def rank_groups(groups: dict[str, list[tuple[int, str]]], prompts: dict[str, list[dict]], judge, schedule: str,
                method: str = "bradley-terry", tie_band: float = 0.05):
    """Compare and rank every prompt's candidates; returns (judgments, {prompt_id: {index: (strength, rank)}}).

    `groups` maps a prompt id to its (candidate index, text) list.
    """
    judgments: list[Judgment] = []
    alive = {pid: [k for k, _ in cands] for pid, cands in groups.items()}
    texts = {pid: dict(cands) for pid, cands in groups.items()}
    round_pairs = {pid: schedule_pairs(alive[pid], schedule) for pid in groups}
    while any(round_pairs.values()):
        items = [PairItem(pid, prompts[pid], a, b, texts[pid][a], texts[pid][b])
                 for pid, pairs in round_pairs.items() for a, b in pairs]
        results = judge.compare(items)
        judgments.extend(results)
        if schedule != "knockout":
            break
        winners: dict[str, list[int]] = {pid: [] for pid in round_pairs}
        for j in results:  # a failed or tied comparison lets the first candidate through
            winners[j.prompt_id].append(j.candidate_b if (j.preference or 0.5) < 0.5 else j.candidate_a)
        for pid, pairs in round_pairs.items():
            if pairs and len(alive[pid]) % 2:
                winners[pid].append(alive[pid][-1])  # the odd one out has a bye
            if pairs:
                alive[pid] = winners[pid]
        round_pairs = {pid: schedule_pairs(alive[pid], "knockout") if len(alive[pid]) > 1 else []
                       for pid in groups}
    by_prompt: dict[str, list[Judgment]] = {pid: [] for pid in groups}
    for j in judgments:
        by_prompt[j.prompt_id].append(j)
    ranking = {}
    for pid, cands in groups.items():
        indices = [k for k, _ in cands]
        pos = {k: n for n, k in enumerate(indices)}
        comps = [(pos[j.candidate_a], pos[j.candidate_b], j.preference) for j in by_prompt[pid]
                 if j.preference is not None]
        strengths, _ = fit_strengths(len(indices), comps, method, tie_band)
        ranks = ranks_of(strengths)
        ranking[pid] = {k: (float(strengths[pos[k]]), ranks[pos[k]]) for k in indices}
    return judgments, ranking
