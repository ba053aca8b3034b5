"""The report's plots (matplotlib, drawn to inline SVG)."""

from __future__ import annotations

import io

from rlaif.report.figures import ci_of, drops, summary_of, value_of


def pyplot():
    import matplotlib  # heavy: imported only when a report is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    pyplot().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def accuracy_plot(state: dict) -> str | None:
    """Checked accuracy per iteration (policy greedy and sampled, the control), with the judge model's as a line."""
    its = [it for it in state["iterations"] if it.get("metrics")]
    base = state.get("baseline") or {}
    if not its or value_of(base, "greedy_accuracy") is None and not any(
            value_of(it["metrics"], "greedy_accuracy") is not None for it in its):
        return None
    fig, ax = pyplot().subplots(figsize=(6.4, 3.6))
    xs = [0] + [it["iteration"] + 1 for it in its]
    for key, label, style in (("greedy_accuracy", "policy, greedy", "o-"), ("sampled_accuracy", "policy, sampled", "s--")):
        ys = [value_of(base, key)] + [value_of(it["metrics"], key) for it in its]
        cis = [ci_of(base, key)] + [ci_of(it["metrics"], key) for it in its]
        pts = [(x, y, c) for x, y, c in zip(xs, ys, cis) if y is not None]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                        yerr=[[p[1] - p[2][0] for p in pts], [p[2][1] - p[1] for p in pts]] if all(p[2] for p in pts)
                        else None, fmt=style, capsize=3, label=label)
    control = [(it["iteration"] + 1, value_of(it.get("control"), "greedy_accuracy")) for it in its if it.get("control")]
    if control:
        ax.plot([c[0] for c in control], [c[1] for c in control], "x:", label="control (SFT on chosen), greedy")
    judge = value_of(state.get("judge_quality"), "greedy_accuracy")
    if judge is not None:
        ax.axhline(judge, color="grey", linestyle="-.", label="judge model, greedy")
    ax.set_xlabel("policy after iteration (0 = start)")
    ax.set_ylabel("checked accuracy (95% CI)")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(xs)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return to_svg(fig)


def drops_plot(state: dict) -> str | None:
    """Pairs kept and rows dropped by reason, stacked, per iteration."""
    rows = [(it["iteration"], summary_of(it, "filter").get("pairs", 0), drops(summary_of(it, "filter")))
            for it in state["iterations"]]
    if not rows:
        return None
    reasons = sorted({r for _, _, d in rows for r in d})
    fig, ax = pyplot().subplots(figsize=(6.4, 3.2))
    xs = [r[0] for r in rows]
    ax.bar(xs, [r[1] for r in rows], label="pairs kept", color="#4a8")
    bottom = [r[1] for r in rows]
    for reason in reasons:
        ys = [d.get(reason, 0) for _, _, d in rows]
        ax.bar(xs, ys, bottom=bottom, label=f"dropped: {reason}")
        bottom = [b + y for b, y in zip(bottom, ys)]
    ax.set_xlabel("iteration")
    ax.set_ylabel("rows")
    ax.set_xticks(xs)
    ax.legend(fontsize=7)
    return to_svg(fig)


def reliability_plot(bins: list[dict], title: str = "") -> str | None:
    """A judge's reliability diagram: observed rate against mean predicted probability per bin (the diagonal is
    perfect calibration), the bars' widths the bins, the counts printed over them."""
    if not bins:
        return None
    fig, ax = pyplot().subplots(figsize=(4.4, 4.0))
    ax.bar([b["low"] for b in bins], [b["observed"] for b in bins], width=[b["high"] - b["low"] for b in bins],
           align="edge", alpha=0.6, edgecolor="#333", label="observed")
    ax.plot([b["mean_p"] for b in bins], [b["observed"] for b in bins], "o", color="#c33", label="bin mean")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for b in bins:
        ax.annotate(str(b["count"]), ((b["low"] + b["high"]) / 2, min(b["observed"] + 0.02, 0.97)), ha="center",
                    fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("judge's P(answer wins)")
    ax.set_ylabel("share of those answers that are the better one")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return to_svg(fig)
