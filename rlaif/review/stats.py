"""Judge-human agreement: Wilson intervals, Cohen's kappa, breakdowns by margin and consistency.

How ties and both-bad verdicts are counted (said once, used everywhere):
- `agreement` (strict, what the gate uses): the share of verdicts that pick the judge's chosen
  response. A tie or a both-bad verdict does not confirm the judge's preference, so it counts as
  not agreeing: such a pair should not be trusted as training data.
- `decisive_agreement`: the same among verdicts that pick a side (ties and both-bad left out), i.e.
  "when a person prefers one response, is it the judge's?".
- `tie_rate`, `both_bad_rate`: reported beside them.
- Kappa, judge vs human: labels as shown on screen (A = left, B = right; the side is random per
  reviewer and item, so the judge's labels are balanced); the judge only ever says A or B, a
  human's tie / both-bad is a category of its own and so a disagreement.
- Kappa, human vs human: four labels in the judge's orientation (chosen, rejected, tie, both-bad),
  on the items both answered.
Each verdict is one observation; the weighted figures give every verdict its item's sampling weight
divided by the number of verdicts on the item, so the set estimate undoes the over-sampling, and
their Wilson interval uses Kish's effective sample size.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

from scipy.stats import norm
from sklearn.metrics import cohen_kappa_score

from rlaif.stats import wilson

SHOWN_LABELS = ["A", "B", "tie", "both-bad"]
JUDGE_LABELS = ["chosen", "rejected", "tie", "both-bad"]


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion; `n` may be an effective (non-integer) sample size."""
    if n <= 0:
        return None
    return wilson(successes, n, z=float(norm.ppf(0.5 + confidence / 2)))


def kappa(a: list[str], b: list[str], labels: list[str]) -> float | None:
    """Cohen's kappa (scikit-learn); None when it is undefined (too few items, or one label only)."""
    if len(a) < 2 or len(set(a) | set(b)) < 2:
        return None
    value = cohen_kappa_score(a, b, labels=labels)
    return None if math.isnan(value) else float(value)


def _rate(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def agreement_block(verdicts: list[dict]) -> dict:
    """Counts, strict and decisive agreement with Wilson 95% intervals, tie and both-bad rates."""
    n = len(verdicts)
    agree = sum(v["label"] == "chosen" for v in verdicts)
    decisive = [v for v in verdicts if v["label"] in ("chosen", "rejected")]
    out = {"verdicts": n, "items": len({v["item_id"] for v in verdicts}), "agree": agree,
           "agreement": agree / n if n else None, "agreement_ci95": wilson_interval(agree, n),
           "decisive_verdicts": len(decisive),
           "decisive_agreement": agree / len(decisive) if decisive else None,
           "decisive_agreement_ci95": wilson_interval(agree, len(decisive)),
           "tie_rate": _rate([v["label"] == "tie" for v in verdicts]),
           "both_bad_rate": _rate([v["label"] == "both-bad" for v in verdicts])}
    return out


def weighted_agreement(verdicts: list[dict]) -> dict:
    """The whole-set estimate: each verdict weighted by its item's weight / verdicts on the item."""
    per_item = defaultdict(int)
    for v in verdicts:
        per_item[v["item_id"]] += 1
    w = [v["weight"] / per_item[v["item_id"]] for v in verdicts]
    total = sum(w)
    if not total:
        return {"weighted_agreement": None, "weighted_agreement_ci95": None, "effective_n": 0.0}
    p = sum(wi for wi, v in zip(w, verdicts) if v["label"] == "chosen") / total
    n_eff = total * total / sum(wi * wi for wi in w)
    return {"weighted_agreement": p, "weighted_agreement_ci95": wilson_interval(p * n_eff, n_eff),
            "effective_n": n_eff}


def margin_bucket(margin: float, quartiles: list[float]) -> str:
    names = ["q1 (smallest margins)", "q2", "q3", "q4 (largest margins)"]
    if not quartiles:
        return names[0]
    return names[sum(margin > q for q in quartiles)]


def review_statistics(verdicts: list[dict], design: dict, reviewers: list[dict]) -> dict:
    """Every figure of the summary page, the `--stats` table and the stage manifest."""
    kinds = sorted({r["kind"] for r in reviewers if any(v["reviewer"] == r["name"] for v in verdicts)})
    stats = {"reviewer_kind": "+".join(kinds) if kinds else "none", "simulated": "simulated" in kinds,
             "sample_size": design.get("sample_size"), "total_pairs": design.get("total_pairs"),
             **agreement_block(verdicts), **weighted_agreement(verdicts)}
    quartiles = design.get("margin_quartiles") or []
    buckets = defaultdict(list)
    for v in verdicts:
        buckets[margin_bucket(v["margin"], quartiles)].append(v)
    stats["by_margin"] = {k: _short(agreement_block(buckets[k])) for k in sorted(buckets)}
    cons = defaultdict(list)
    for v in verdicts:
        cons[{1: "consistent", 0: "inconsistent"}.get(v["consistent"], "unknown")].append(v)
    stats["by_consistency"] = {k: _short(agreement_block(cons[k])) for k in sorted(cons)}
    by_reviewer = defaultdict(list)
    for v in verdicts:
        by_reviewer[v["reviewer"]].append(v)
    stats["by_reviewer"] = {
        name: {**_short(agreement_block(vs)), "kind": vs[0]["kind"],
               "kappa_vs_judge": kappa(["B" if v["swapped"] else "A" for v in vs], [v["choice"] for v in vs],
                                       SHOWN_LABELS)}
        for name, vs in sorted(by_reviewer.items())}
    pairs = {}
    for a, b in itertools.combinations(sorted(by_reviewer), 2):
        la = {v["item_id"]: v["label"] for v in by_reviewer[a]}
        lb = {v["item_id"]: v["label"] for v in by_reviewer[b]}
        common = sorted(la.keys() & lb.keys())
        pairs[f"{a} vs {b}"] = {"items": len(common),
                                "kappa": kappa([la[i] for i in common], [lb[i] for i in common], JUDGE_LABELS),
                                "raw_agreement": _rate([la[i] == lb[i] for i in common])}
    stats["between_reviewers"] = pairs
    return stats


def _short(block: dict) -> dict:
    keep = ("verdicts", "items", "agreement", "agreement_ci95", "decisive_agreement", "tie_rate", "both_bad_rate")
    return {k: block[k] for k in keep}


def flat_summary(stats: dict) -> dict:
    """The headline figures as one flat mapping (the CLI's summary table)."""
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    def ci(c):
        return "n/a" if not c else f"{100 * c[0]:.1f}-{100 * c[1]:.1f}%"

    rows = {"reviewers": stats["reviewer_kind"] + (" (SIMULATED)" if stats["simulated"] else ""),
            "pairs reviewed / sampled / total": f"{stats['items']} / {stats['sample_size']} / {stats['total_pairs']}",
            "verdicts": stats["verdicts"],
            "agreement (ties, both-bad = no)": f"{pct(stats['agreement'])} [{ci(stats['agreement_ci95'])}]",
            "weighted agreement (whole set)": f"{pct(stats['weighted_agreement'])} "
                                              f"[{ci(stats['weighted_agreement_ci95'])}]",
            "decisive agreement": f"{pct(stats['decisive_agreement'])} [{ci(stats['decisive_agreement_ci95'])}]",
            "tie / both-bad rate": f"{pct(stats['tie_rate'])} / {pct(stats['both_bad_rate'])}"}
    for name, r in stats["by_reviewer"].items():
        k = r["kappa_vs_judge"]
        rows[f"kappa judge vs {name}"] = "n/a" if k is None else f"{k:.3f}"
    for name, r in stats["between_reviewers"].items():
        rows[f"kappa {name} ({r['items']} items)"] = "n/a" if r["kappa"] is None else f"{r['kappa']:.3f}"
    for group in ("by_margin", "by_consistency"):
        for name, b in stats[group].items():
            rows[f"agreement, {name}"] = f"{pct(b['agreement'])} of {b['verdicts']}"
    return rows
