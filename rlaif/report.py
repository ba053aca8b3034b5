"""`RUN/report.html`: one self-contained page (inline SVG plots) of a whole run, rebuilt from its manifests.

Per iteration: candidates, pairs kept and dropped by reason, judge position consistency and
first-position rate, judge-human agreement, reward-model accuracy, win rate, checked accuracy with
intervals, time per stage, and the openai engine's tokens and dollars (with a `pricing` table); the judge's own checked accuracy is drawn beside the policy's, so a
reader sees when the policy catches up with its judge.
"""

from __future__ import annotations

import html
import io
from pathlib import Path

from rlaif.runs import atomic_write_bytes


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _value(d, key):
    v = (d or {}).get(key)
    return v.get("value") if isinstance(v, dict) else v


def _ci(d, key):
    v = (d or {}).get(key)
    return v.get("ci95") if isinstance(v, dict) else None


def drops(filter_summary: dict) -> dict[str, int]:
    """`dropped.<reason>` counts of a filter manifest summary, by reason."""
    return {k.split(".", 1)[1]: v for k, v in (filter_summary or {}).items() if k.startswith("dropped.")}


def accuracy_plot(state: dict) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [it for it in state["iterations"] if it.get("metrics")]
    base = state.get("baseline") or {}
    if not its or _value(base, "greedy_accuracy") is None and not any(_value(it["metrics"], "greedy_accuracy")
                                                                       is not None for it in its):
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    xs = [0] + [it["iteration"] + 1 for it in its]
    for key, label, style in (("greedy_accuracy", "policy, greedy", "o-"), ("sampled_accuracy", "policy, sampled", "s--")):
        ys = [_value(base, key)] + [_value(it["metrics"], key) for it in its]
        cis = [_ci(base, key)] + [_ci(it["metrics"], key) for it in its]
        pts = [(x, y, c) for x, y, c in zip(xs, ys, cis) if y is not None]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                        yerr=[[p[1] - p[2][0] for p in pts], [p[2][1] - p[1] for p in pts]] if all(p[2] for p in pts)
                        else None, fmt=style, capsize=3, label=label)
    control = [(it["iteration"] + 1, _value(it.get("control"), "greedy_accuracy")) for it in its if it.get("control")]
    if control:
        ax.plot([c[0] for c in control], [c[1] for c in control], "x:", label="control (SFT on chosen), greedy")
    judge = _value(state.get("judge_quality"), "greedy_accuracy")
    if judge is not None:
        ax.axhline(judge, color="grey", linestyle="-.", label="judge model, greedy")
    ax.set_xlabel("policy after iteration (0 = start)")
    ax.set_ylabel("checked accuracy (95% CI)")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(xs)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _svg(fig)


def drops_plot(state: dict) -> str | None:
    import matplotlib.pyplot as plt

    rows = []
    for it in state["iterations"]:
        summary = it.get("stages", {}).get("filter", {}).get("summary", {})
        rows.append((it["iteration"], summary.get("pairs", 0), drops(summary)))
    if not rows:
        return None
    reasons = sorted({r for _, _, d in rows for r in d})
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    xs = [r[0] for r in rows]
    bottom = [0] * len(rows)
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
    return _svg(fig)


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def with_ci(d, key) -> str:
    v, ci = _value(d, key), _ci(d, key)
    if v is None:
        return "–"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def stage_seconds(it: dict) -> dict[str, float]:
    """Seconds per stage: the stage's own manifest (which survives a resume), else the loop's wall clock."""
    times = dict(it.get("times", {}))
    for stage, figures in it.get("stages", {}).items():
        if figures.get("seconds"):
            times[stage] = figures["seconds"]
    if (it.get("train") or {}).get("train_seconds"):
        times["train"] = it["train"]["train_seconds"]
    return times


def iteration_rows(state: dict) -> list[list]:
    rows = []
    for it in state["iterations"]:
        st = it.get("stages", {})
        gen = st.get("generate", {}).get("summary", {})
        jud = st.get("judge", {}).get("summary", {})
        fil = st.get("filter", {}).get("summary", {})
        m = it.get("metrics", {}) or {}
        review = it.get("review") or {}
        agreement = review.get("agreement")
        ci = review.get("ci95")
        rows.append([
            it["iteration"], gen.get("candidates"), fil.get("pairs"),
            sum(drops(fil).values()) if fil else None,
            jud.get("position_consistency"), jud.get("first_position_rate"),
            (f"{agreement:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" + (" (simulated)" if review.get("simulated") else ""))
            if agreement is not None and ci else "–",
            with_ci(m, "reward_model_accuracy"), _fmt(_value(m, "win_rate")),
            with_ci(m, "greedy_accuracy"), with_ci(m, "sampled_accuracy"),
            with_ci(it.get("control"), "greedy_accuracy"),
            ", ".join(f"{k} {v:.0f}s" for k, v in stage_seconds(it).items()),
        ])
    return rows


def api_rows(state: dict) -> list[list]:
    """Token usage and dollars of the openai engine, per iteration, stage and model (the `api.*` summary keys)."""
    rows = []
    for it in state["iterations"]:
        for stage, figures in it.get("stages", {}).items():
            per_model: dict[str, dict] = {}
            for key, value in (figures.get("summary") or {}).items():
                if key.startswith("api."):
                    model, figure = key[4:].rsplit(".", 1)
                    per_model.setdefault(model, {})[figure] = value
            for model, f in sorted(per_model.items()):
                rows.append([it["iteration"], stage, model, f.get("answers"), f.get("ledger_hits"),
                             f.get("prompt_tokens"), f.get("completion_tokens"), f.get("batch_answers", 0),
                             f"{f['cost_usd']:,.4f}" if f.get("cost_usd") is not None else None])
    return rows


API_HEADERS = ["iter", "stage", "model", "answers paid", "ledger hits", "input tokens", "output tokens",
               "via Batch API", "cost (USD)"]

HEADERS = ["iter", "candidates", "pairs kept", "dropped", "judge consistency", "judge 1st-slot rate",
           "judge-human agreement", "RM accuracy", "win rate vs prev", "greedy acc. [95% CI]",
           "sampled acc. [95% CI]", "control greedy acc.", "time per stage"]

STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1rem 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}h1{font-size:1.5rem}.plots{display:flex;flex-wrap:wrap;gap:1rem}.note{color:#555;font-size:13px}"""


def render(run: Path, state: dict) -> str:
    base = state.get("baseline") or {}
    judge = state.get("judge_quality") or {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>rlaif report: {html.escape(run.name)}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>rlaif run <code>{html.escape(str(run))}</code></h1>",
             f"<p>Status: <b>{html.escape(state.get('status', '?'))}</b>"
             + (f" — {html.escape(state['stop_reason'])}" if state.get("stop_reason") else "") + ". "
             f"Final model: <code>{html.escape(str(state.get('final_model')))}</code>"
             + (f" (iteration {state['best_iteration']})" if state.get("best_iteration") is not None else "")
             + ".</p>",
             "<p>Starting policy: greedy " + html.escape(with_ci(base, "greedy_accuracy")) + ", sampled "
             + html.escape(with_ci(base, "sampled_accuracy")) + ". Judge model as a policy: greedy "
             + html.escape(with_ci(judge, "greedy_accuracy")) + ".</p>",
             "<p class='note'>A judge cannot lift a policy past itself: when the policy's accuracy nears the judge "
             "model's, agreement falls and both-wrong pairs slip through.</p>",
             "<div class='plots'>"]
    for plot in (accuracy_plot(state), drops_plot(state)):
        if plot:
            parts.append(f"<div>{plot}</div>")
    parts.append("</div><h2>Per iteration</h2>")
    parts.append(_table(HEADERS, iteration_rows(state)))
    parts.append("<h2>Drops by reason</h2>")
    drop_rows = []
    for it in state["iterations"]:
        for reason, count in drops(it.get("stages", {}).get("filter", {}).get("summary", {})).items():
            drop_rows.append([it["iteration"], reason, count])
    parts.append(_table(["iter", "reason", "rows"], drop_rows))
    api = api_rows(state)
    if api:
        parts.append("<h2>API usage and cost</h2>")
        parts.append(_table(API_HEADERS, api))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run: str | Path) -> Path:
    """Rebuild `RUN/report.html` from `RUN/loop.json` (written by the loop)."""
    from rlaif.loop import check_finished

    run = Path(run)
    state = check_finished(run)
    path = run / "report.html"
    atomic_write_bytes(path, render(run, state).encode())
    return path
