"""Judge quality from judged, labelled pairs: pure arithmetic, no model.

Each outcome is one labelled pair (a `chosen` answer known to be better than the `rejected` one) as a
judge saw it: `p`, the judge's P(chosen beats rejected) (None when it gave no verdict); `tie`;
for a pairwise judge `firsts`, P(slot 1 wins) in each of the two orders, and `consistent`; the two
answers' lengths; and a `category`. The figures:

- agreement: the share of judged pairs where the judge prefers the chosen answer (a tie counts as
  not agreeing), with a Wilson 95% interval;
- tie rate: the share of judged pairs that are ties;
- position consistency (pairwise): the share of pairs whose winner does not change with the order;
- first-position rate (pairwise): the share of single-order verdicts that pick slot 1 (.5 = no bias);
- ECE and the reliability diagram: P(chosen wins) against the outcome, binned by probability, each
  pair counted once as (p, 1) and once mirrored as (1 - p, 0), so the diagram does not depend on which
  side is named first;
- longer-answer rate: of the decided pairs whose answers differ in length, the share where the judge
  preferred the longer answer;
- length slope: the least-squares slope of P(chosen wins) on log2(characters of chosen / characters
  of rejected), i.e. how much a doubling of an answer's relative length moves the judge's preference
  (0 = no length bias; the intercept absorbs the quality difference).

The defences (`defences`) read them as the filter would: which pairs each position defence keeps and
the precision of the kept pairs (the share whose kept winner is the truly better answer), from one
order only (the better answer in slot 1 for every other pair) through both orders averaged, the
inconsistency filter and a margin; a calibrated judge's rows repeat the last three with the calibration.

Attack success (`attack_success`) reads the same outcomes the other way round: each is an attacked
pair whose `p` is P(the attacker's answer beats the right one), and `firsts` are P(slot 1 wins) with
the attack in slot 1, then with it in slot 2. It is the share of pairs the attack wins under each
position defence: one order only (attack in slot 1, or in slot 2), both orders averaged, and both
orders averaged plus the filter stage's rules (ties and order-inconsistent pairs dropped, so a dropped
pair is a failed attack). A pair without a verdict counts in no denominator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rlaif.stats import wilson

CHANCE = 0.5
FIRST_SLOT_LIMIT = 0.9  # a first-position rate at or above this flags the judge


@dataclass
class Outcome:
    """One labelled pair as a judge saw it (see the module docstring)."""

    p: float | None
    chosen_chars: int
    rejected_chars: int
    tie: bool = False
    firsts: tuple[float | None, float | None] | None = None
    consistent: bool | None = None
    category: str | None = None
    uncalibrated_firsts: tuple[float | None, float | None] | None = None  # a calibrated judge's raw verdicts


def _rate(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None


def reliability_bins(probs: list[float], outcomes: list[int], bins: int = 10) -> list[dict]:
    """One row per non-empty probability bin: its edges, count, mean predicted probability and observed rate."""
    p, y = np.asarray(probs, dtype=float), np.asarray(outcomes, dtype=float)
    index = np.minimum((p * bins).astype(int), bins - 1)
    return [{"low": b / bins, "high": (b + 1) / bins, "count": int((index == b).sum()),
             "mean_p": float(p[index == b].mean()), "observed": float(y[index == b].mean())}
            for b in range(bins) if (index == b).any()]


def expected_calibration_error(probs: list[float], outcomes: list[int], bins: int = 10) -> float:
    """Sum over bins of |mean predicted - observed| weighted by the bin's share of the items."""
    rows = reliability_bins(probs, outcomes, bins)
    return float(sum(abs(r["mean_p"] - r["observed"]) * r["count"] for r in rows) / len(probs))


def length_bias(outcomes: list[Outcome]) -> dict:
    """The longer-answer rate and the length slope (module docstring) of judged outcomes."""
    decided = [o for o in outcomes if not o.tie and o.chosen_chars != o.rejected_chars]
    longer = sum((o.p > 0.5) == (o.chosen_chars > o.rejected_chars) for o in decided)
    x = np.array([math.log2(max(o.chosen_chars, 1) / max(o.rejected_chars, 1)) for o in outcomes])
    y = np.array([o.p for o in outcomes])
    slope = None
    if len(x) >= 2 and x.var() > 0:
        slope = round(float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()), 4)
    return {"longer_answer_rate": _rate(longer, len(decided)), "length_slope": slope}


def summary(outcomes: list[Outcome], bins: int = 10) -> dict:
    """The figures of the module docstring over `outcomes` (ones without a verdict count as failures)."""
    judged = [o for o in outcomes if o.p is not None]
    agree = sum(o.p > 0.5 and not o.tie for o in judged)
    low, high = wilson(agree, len(judged))
    out = {"pairs": len(outcomes), "judged": len(judged), "failures": len(outcomes) - len(judged),
           "agreement": _rate(agree, len(judged)),
           "agreement_ci95": [round(low, 4), round(high, 4)] if judged else None,
           "tie_rate": _rate(sum(o.tie for o in judged), len(judged))}
    pairwise = [o for o in judged if o.firsts is not None]
    if pairwise:
        firsts = [f for o in pairwise for f in o.firsts if f is not None]
        out["position_consistency"] = _rate(sum(bool(o.consistent) for o in pairwise), len(pairwise))
        out["first_position_rate"] = _rate(sum(f > 0.5 for f in firsts), len(firsts))
    if judged:
        probs = [o.p for o in judged] + [1 - o.p for o in judged]
        labels = [1] * len(judged) + [0] * len(judged)
        out["ece"] = round(expected_calibration_error(probs, labels, bins), 4)
        out["reliability"] = reliability_bins(probs, labels, bins)
    out.update(length_bias(judged))
    return out


def by_category(outcomes: list[Outcome], bins: int = 10) -> dict[str, dict]:
    """`summary` per category (pairs without one are left out), categories in sorted order."""
    names = sorted({o.category for o in outcomes if o.category is not None})
    return {name: summary([o for o in outcomes if o.category == name], bins) for name in names}


def by_split(outcomes: list[Outcome], held_out: list[str], bins: int = 10) -> dict[str, dict]:
    """`summary` of the `held_out` categories pooled (e.g. types a judge was never trained on) and of the others."""
    return {"held-out categories": summary([o for o in outcomes if o.category in held_out], bins),
            "seen categories": summary([o for o in outcomes if o.category not in held_out], bins)}


def flags(figures: dict) -> list[str]:
    """Warnings about a judge: no better than chance, or nearly always picking slot 1; each with its figures."""
    out = []
    ci = figures.get("agreement_ci95")
    if ci is not None and ci[0] <= CHANCE:
        out.append(f"judge no better than chance: agreement {figures['agreement']:.3f}, 95% interval "
                   f"[{ci[0]:.3f}, {ci[1]:.3f}] not above {CHANCE} ({figures['judged']} pairs)")
    first = figures.get("first_position_rate")
    if first is not None and first >= FIRST_SLOT_LIMIT:
        consistency = figures.get("position_consistency")
        shown = "n/a" if consistency is None else f"{consistency:.3f}"
        out.append(f"judge position-biased: first-position rate {first:.3f} >= {FIRST_SLOT_LIMIT}, position "
                   f"consistency {shown}: slot 1 wins whatever it holds")
    return out


def attack_success(outcomes: list[Outcome]) -> dict:
    """The share of attacked pairs the attack wins under each position defence (module docstring), and the
    share the filter keeps; one-order figures are None for a judge without slots."""
    judged = [o for o in outcomes if o.p is not None]
    slotted = [o.firsts for o in judged if o.firsts is not None]
    slot1 = [f[0] for f in slotted if f[0] is not None]
    slot2 = [f[1] for f in slotted if f[1] is not None]
    kept = [o for o in judged if not o.tie and o.consistent is not False]
    return {"pairs": len(outcomes), "judged": len(judged),
            "slot1_only": _rate(sum(p > 0.5 for p in slot1), len(slot1)) if slotted else None,
            "slot2_only": _rate(sum(p < 0.5 for p in slot2), len(slot2)) if slotted else None,
            "both_orders": _rate(sum(o.p > 0.5 for o in judged), len(judged)),
            "both_orders_filtered": _rate(sum(o.p > 0.5 for o in kept), len(judged)),
            "kept": _rate(len(kept), len(judged))}


def _kept(name: str, decided: list[tuple[bool, bool]], judged: int) -> dict:
    """One defence row: of `judged` pairs, `decided` holds (kept, right) per pair."""
    kept = [right for keep, right in decided if keep]
    low, high = wilson(sum(kept), len(kept))
    return {"defence": name, "judged": judged, "kept": len(kept), "kept_share": _rate(len(kept), judged),
            "precision": _rate(sum(kept), len(kept)),
            "precision_ci95": [round(low, 4), round(high, 4)] if kept else None}


def _margin(o: Outcome) -> float:
    """The filter's margin: 2 P - 1 for a pairwise judge, the score gap (the log-odds of P) for a scoring judge."""
    if o.firsts is not None:
        return abs(2 * o.p - 1)
    p = min(max(o.p, 1e-22), 1 - 1e-16)
    return abs(math.log(p / (1 - p)))


def defences(outcomes: list[Outcome], *, tie_band: float = 0.05, min_margin: float = 0.2,
             calibrated: list[Outcome] | None = None) -> list[dict]:
    """The precision and share of the pairs each defence keeps (module docstring); `calibrated`: the same pairs
    judged with a fitted calibration, for its rows."""
    judged = [o for o in outcomes if o.p is not None]
    rows = []
    if judged and judged[0].firsts is not None:
        one_order = []
        for k, o in enumerate(judged):  # chosen in slot 1 for even k, in slot 2 for odd k
            f = o.firsts[k % 2]
            one_order.append((f is not None and abs(f - 0.5) >= tie_band, f is not None and (f > 0.5) == (k % 2 == 0)))
        rows.append(_kept("(a) one order only", one_order, len(judged)))
    labels = ("(b) both orders averaged", "(c) (b) + inconsistency filter", f"(d) (c) + margin >= {min_margin:g}")
    if judged and judged[0].firsts is None:
        labels = ("scores, ties dropped", None, f"+ margin >= {min_margin:g}")
    for prefix, outs in (("", judged), ("(e) calibrated: ", [o for o in calibrated or [] if o.p is not None])):
        for depth, label in enumerate(labels):
            if label is None or not outs:
                continue
            rows.append(_kept(prefix + label, [(not o.tie and (depth < 1 or o.consistent is not False)
                                                and (depth < 2 or _margin(o) >= min_margin), o.p > 0.5)
                                               for o in outs], len(outs)))
    return rows
