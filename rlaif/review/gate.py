"""The quality gate: export and the loop refuse to train on pairs whose judge people overrule too often.

The gate passes when at least `min_reviewed` sampled pairs carry a verdict and the whole-set estimate
of judge-human agreement (weighted to undo the over-sampling; ties and both-bad count as not
agreeing) is at least `min_agreement`. Simulated reviews pass or fail the same way, and say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rlaif.errors import RunError
from rlaif.review.stats import review_statistics
from rlaif.review.store import ReviewStore
from rlaif.runs import stage_dir

STORE_NAME = "review.sqlite"


def store_path(run: str | Path, iteration: int = 0) -> Path:
    return stage_dir(run, "review", iteration) / STORE_NAME


@dataclass
class GateResult:
    passed: bool
    message: str
    reviewed: int
    agreement: float | None
    ci95: tuple[float, float] | None
    simulated: bool
    stats: dict = field(default_factory=dict)

    def require(self) -> "GateResult":
        """Raise RunError with the figures when the gate failed (what export and the loop call)."""
        if not self.passed:
            raise RunError(self.message)
        return self


def check_gate(run: str | Path, iteration: int, min_agreement: float, min_reviewed: int) -> GateResult:
    """Judge the review of `run/iter-K` against the thresholds; never raises for a failed gate."""
    where = f"{run} iter-{iteration:03d}"
    path = store_path(run, iteration)
    if not path.exists():
        if min_reviewed <= 0 and min_agreement <= 0:
            return GateResult(True, f"review gate off for {where} (min_reviewed 0, min_agreement 0)",
                              0, None, None, False)
        return GateResult(False, f"review gate failed for {where}: no review yet ({path} does not exist); run "
                          f"`rlaif review {run} --iteration {iteration}` (or `--simulate` for an unattended run), "
                          f"or set review.min_reviewed and review.min_agreement to 0 to train without one",
                          0, None, None, False)
    store = ReviewStore(path)
    stats = review_statistics(store.current_verdicts(), store.meta().get("design", {}), store.reviewers())
    reviewed, p, ci = stats["items"], stats["weighted_agreement"], stats["weighted_agreement_ci95"]
    label = " [SIMULATED reviewers]" if stats["simulated"] else ""
    figures = (f"{reviewed} of {stats['sample_size']} sampled pairs reviewed ({stats['verdicts']} verdicts); "
               f"judge-human agreement {_fmt(p)} (95% CI {_fmt(ci[0]) if ci else 'n/a'}-{_fmt(ci[1]) if ci else 'n/a'}, "
               f"weighted to undo over-sampling; ties and both-bad count as disagreeing)")
    problems = []
    if reviewed < min_reviewed:
        problems.append(f"fewer than review.min_reviewed = {min_reviewed} pairs reviewed")
    if min_agreement > 0 and (p is None or p < min_agreement):
        problems.append(f"agreement below review.min_agreement = {min_agreement:.2f}")
    if problems:
        msg = f"review gate failed for {where}{label}: {' and '.join(problems)}: {figures}"
    else:
        msg = f"review gate passed for {where}{label}: {figures}"
    return GateResult(not problems, msg, reviewed, p, ci, stats["simulated"], stats)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
