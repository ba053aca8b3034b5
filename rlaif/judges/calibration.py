"""Contextual calibration of a pairwise judge's verdicts (Zhao et al. 2021), then a fitted temperature.

A judge pulled towards one slot gives its verdict tokens a constant extra log-prob whatever the
answers. The bias per slot is estimated as the mean renormalised log-prob of each verdict token over
both orders of a set of pairs, in which each slot holds the better answer half the time; subtracting
it centres the judge's slot-1 log-odds, which moves its first-position rate towards .5. A temperature,
fitted on the same pairs' labels by maximum likelihood, then rescales the calibrated log-odds: it
changes the confidence (ECE) but never which slot wins. Fit on pairs disjoint from the ones scored.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from rlaif.config import VerdictCalibration
from rlaif.errors import ConfigError
from rlaif.judges.base import PairItem

LOGPROB_FLOOR = -100.0  # a verdict token the engine gives no mass still gets a finite log-prob


def renormalised_logprobs(logprobs: dict[str, float], tokens: list[str]) -> list[float] | None:
    """log P(token) renormalised over `tokens` (None if the model gives them no mass at all)."""
    values = [logprobs.get(t, -math.inf) for t in tokens]
    if not any(math.isfinite(v) for v in values):
        return None
    values = [max(v, LOGPROB_FLOOR) for v in values]
    top = max(values)
    total = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - total for v in values]


def slot_one_probability(logprobs: list[float], calibration: VerdictCalibration) -> float:
    """P(slot 1 wins) after removing the per-slot bias and dividing the log-odds by the temperature."""
    z = ((logprobs[0] - calibration.bias[0]) - (logprobs[1] - calibration.bias[1])) / calibration.temperature
    return 1 / (1 + math.exp(-max(-50.0, min(50.0, z))))


def file_id(path: str | Path) -> str:
    """`path (sha256 12 hex)`: which file a calibration was fitted on."""
    return f"{path} (sha256 {hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]})"


def fit(judge, pairs: list[dict], fitted_on: str | None = None) -> VerdictCalibration:
    """The per-slot bias, then the temperature, of `judge` (a pairwise judge in logprobs mode) on labelled `pairs`."""
    if judge.kind != "pairwise" or judge.mode != "logprobs":
        raise ConfigError("a calibration is fitted for a pairwise judge in logprobs mode (--judge pairwise "
                          "--mode logprobs)")
    items = [PairItem(p["prompt_id"], p["prompt"], 0, 1, p["chosen"], p["rejected"]) for p in pairs]
    orders = judge.verdict_logprobs(items)  # AB (chosen in slot 1), BA (chosen in slot 2), per pair
    valid = [(lp, k % 2 == 0) for k, lp in enumerate(orders) if lp is not None]
    if not valid:
        raise ConfigError("cannot fit a calibration: the judge gave the verdict tokens no probability on any pair")
    logprobs = np.array([lp for lp, _ in valid])
    bias = logprobs.mean(axis=0)
    z = (logprobs[:, 0] - bias[0]) - (logprobs[:, 1] - bias[1])
    slot_one_right = np.array([right for _, right in valid])

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        return float(np.logaddexp(0, np.where(slot_one_right, -s, s)).sum())

    log_t = minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded").x
    return VerdictCalibration(bias=[round(float(b), 6) for b in bias], temperature=round(math.exp(log_t), 6),
                              fitted_on=fitted_on, fitted_pairs=len(pairs))


def check_disjoint(fit_pairs: list[dict], scored_pairs: list[dict], fit_path, scored_path) -> None:
    """A calibration fitted on the pairs it then scores would flatter itself: refuse shared prompts."""
    key = lambda p: tuple((m["role"], m["content"]) for m in p["prompt"])  # noqa: E731
    shared = {key(p) for p in fit_pairs} & {key(p) for p in scored_pairs}
    if shared:
        raise ConfigError(f"{fit_path} and {scored_path} share {len(shared)} prompt(s); fit the calibration on "
                          "pairs disjoint from the ones it is measured on")
