"""`rlaif compare RUN...`: the arms of a study side by side, on the same held-out prompts.

Each run is an arm (its policy after each iteration, from its own start), and a run with
`loop.control: true` adds its control as a second arm. One table gives every arm's held-out rate per
iteration with pairs kept, the judge's agreement with the reviewers on the kept pairs and wall time;
a second gives exact McNemar tests between arms at each iteration (and of each policy against its
start), paired on the same prompts, which detect differences far smaller than non-overlapping
intervals do. Written to OUT/compare.html (with the plot inline), OUT/accuracy.svg (the plot alone,
for docs) and OUT/compare.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from itertools import combinations
from pathlib import Path

from rlaif.errors import RunError
from rlaif.report.figures import agreement, ci_of, paired, summary_of, value_of, with_ci
from rlaif.report.pages import PAGES
from rlaif.report.plots import pyplot, to_svg
from rlaif.runs import atomic_write_bytes, check_finished, dump_json

KEY = "greedy_accuracy"
HEADERS = ["arm", "policy", "greedy [95% CI]", "sampled [95% CI]", "seen types", "held-out types", "pairs kept",
           "judge agreement on kept pairs", "wall time"]
PAIRED_HEADERS = ["policy", "arm", "vs arm", "difference", "prompts only the arm passes", "only the other passes",
                  "p (exact McNemar)"]


@dataclass
class Arm:
    """One arm: its evaluation after each point (the start, then each iteration) and its run's figures."""

    name: str
    points: list[tuple[str, dict]] = field(default_factory=list)  # (label, evaluate metrics)
    pairs_kept: dict[str, object] = field(default_factory=dict)
    agreement: dict[str, str] = field(default_factory=dict)
    wall: str = "–"


def arms_of(runs: list[Path]) -> list[Arm]:
    """The arms of the runs: each run's policy, and its control when the run has one."""
    if len(set(r.name for r in runs)) != len(runs):
        raise RunError("compare: the runs must have different directory names (they name the arms)")
    arms = []
    for run in runs:
        state = check_finished(run)
        its = [it for it in state["iterations"] if it.get("metrics")]
        if not its:
            raise RunError(f"{run}: no evaluated iteration in {run / 'loop.json'}; nothing to compare")
        policy = Arm(run.name, [("start", state.get("baseline") or {})], wall=_wall(state))
        for it in its:
            label = f"iter {it['iteration']}"
            policy.points.append((label, it["metrics"]))
            policy.pairs_kept[label] = summary_of(it, "filter").get("pairs")
            policy.agreement[label] = agreement(it)
        arms.append(policy)
        if any(it.get("control") for it in its):
            control = Arm(f"{run.name} control", [("start", state.get("baseline") or {})], wall=policy.wall)
            control.points += [(f"iter {it['iteration']}", it.get("control") or {}) for it in its]
            control.pairs_kept = dict(policy.pairs_kept)  # the control trains on the policy's chosen answers
            arms.append(control)
    return arms


def _wall(state: dict) -> str:
    if not state.get("finished_at"):
        return "–"
    elapsed = datetime.fromisoformat(state["finished_at"]) - datetime.fromisoformat(state["started_at"])
    seconds = int(elapsed.total_seconds())
    return f"{seconds // 60} min {seconds % 60:02d} s"


def _split(metrics: dict, name: str) -> str:
    split = ((metrics.get(KEY) or {}).get("by_split") or {}).get(name)
    return with_ci({"x": split}, "x") + f" n={split['n']}" if split else "–"


def arm_rows(arms: list[Arm]) -> list[list]:
    return [[arm.name, label, with_ci(m, KEY), with_ci(m, "sampled_accuracy"), _split(m, "seen categories"),
             _split(m, "held-out categories"), arm.pairs_kept.get(label, ""), arm.agreement.get(label, ""),
             arm.wall if label == arm.points[-1][0] else ""]
            for arm in arms for label, m in arm.points]


def paired_rows(arms: list[Arm]) -> list[dict]:
    """Every pair of arms at every point both reached (the starts of two runs too: the same model should show
    no difference), where both have per-prompt outcomes on the same prompts; then each arm's policy after
    each iteration against its start."""
    rows = []
    labels = list(dict.fromkeys(label for arm in arms for label, _ in arm.points))
    for label in labels:
        for a, b in combinations(arms, 2):
            ma, mb = dict(a.points).get(label), dict(b.points).get(label)
            if ma is None or mb is None or ma is mb:  # a run's policy and control share their start
                continue
            test = paired(ma, mb)
            if test is not None:
                rows.append({"policy": label, "arm": a.name, "vs": b.name, **test})
    for arm in arms:  # each arm's policies against its own start
        for label, metrics in arm.points[1:]:
            test = paired(metrics, arm.points[0][1])
            if test is not None:
                rows.append({"policy": f"{label} vs start", "arm": arm.name, "vs": f"{arm.name} start", **test})
    return rows


def paired_cells(test: dict) -> list:
    """One paired test as the cells of a row under PAIRED_HEADERS."""
    return [test["policy"], test["arm"], test["vs"], f"{test['difference']:+.3f}", test["a_only"], test["b_only"],
            f"{test['p_value']:.4f}"]


def accuracy_svg(arms: list[Arm]) -> str | None:
    """Greedy held-out rate with 95% intervals, per arm, after each iteration (0 = the start)."""
    if not any(value_of(m, KEY) is not None for arm in arms for _, m in arm.points):
        return None
    fig, ax = pyplot().subplots(figsize=(6.4, 3.8))
    width = 0.08
    for i, arm in enumerate(arms):
        offset = (i - (len(arms) - 1) / 2) * width
        pts = [(x + offset, value_of(m, KEY), ci_of(m, KEY)) for x, (_, m) in enumerate(arm.points)
               if value_of(m, KEY) is not None]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                    yerr=[[p[1] - p[2][0] for p in pts], [p[2][1] - p[1] for p in pts]] if all(p[2] for p in pts)
                    else None, fmt="o-", capsize=3, label=arm.name)
    ticks = max(len(arm.points) for arm in arms)
    ax.set_xticks(range(ticks), ["start"] + [f"iter {k}" for k in range(ticks - 1)])
    ax.set_xlabel("policy after iteration")
    ax.set_ylabel("held-out pass rate, greedy (95% CI)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return to_svg(fig)


def write_comparison(runs: list[Path], out: Path) -> dict:
    """Write OUT/compare.html, OUT/compare.json and OUT/accuracy.svg for the runs; returns what compare.json holds."""
    arms = arms_of(runs)
    rows, tests = arm_rows(arms), paired_rows(arms)
    plot = accuracy_svg(arms)
    out.mkdir(parents=True, exist_ok=True)
    figures = {"runs": [str(r) for r in runs], "headers": HEADERS, "arms": rows, "paired": tests,
               "files": {"report": str(out / "compare.html"), "plot": str(out / "accuracy.svg") if plot else None}}
    if plot:
        atomic_write_bytes(out / "accuracy.svg", ('<?xml version="1.0" encoding="utf-8"?>\n' + plot).encode())
    page = PAGES.get_template("compare.html").render(
        runs=runs, headers=HEADERS, rows=rows, plot=plot, paired_headers=PAIRED_HEADERS,
        paired=[paired_cells(t) for t in tests])
    atomic_write_bytes(out / "compare.html", page.encode())
    dump_json(out / "compare.json", figures)
    return figures


__all__ = ["HEADERS", "PAIRED_HEADERS", "arm_rows", "arms_of", "paired_cells", "paired_rows", "write_comparison"]
