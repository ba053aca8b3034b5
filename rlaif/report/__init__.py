"""`RUN/report.html`: one self-contained page (inline SVG plots) of a whole run, rebuilt from RUN/loop.json.

Per iteration: candidates, pairs kept and dropped by reason, judge position consistency and
first-position rate, judge-human agreement, the judge on the anchor set (`loop.anchor_pairs`), reward-model accuracy, win rate, checked accuracy with
intervals, time per stage, and the openai engine's tokens and dollars (with a `pricing` table); the judge's own checked accuracy is drawn beside the policy's, so a
reader sees when the policy catches up with its judge. The page is `templates/report.html`.
"""

from __future__ import annotations

from pathlib import Path

from rlaif.report.figures import API_HEADERS, COLUMNS, api_rows, category_table, drops, exit_code, fmt, iteration_rows, loop_table, summary_of, with_ci
from rlaif.report.pages import PAGES
from rlaif.report.plots import accuracy_plot, drops_plot
from rlaif.runs import atomic_write_bytes, check_finished

__all__ = ["COLUMNS", "exit_code", "iteration_rows", "loop_table", "render", "with_ci", "write_report"]


def render(run: Path, state: dict) -> str:
    """The report page of `state` (RUN/loop.json) as HTML; model text and names are escaped."""
    plots = [p for p in (accuracy_plot(state), drops_plot(state)) if p]
    category_headers, category_rows = category_table(state)
    return PAGES.get_template("report.html").render(
        run=run, state=state, baseline=state.get("baseline") or {}, judge=state.get("judge_quality") or {},
        plots=plots, columns=COLUMNS, rows=iteration_rows(state), fmt=fmt, with_ci=with_ci,
        drops=lambda it: drops(summary_of(it, "filter")), api_headers=API_HEADERS, api=api_rows(state),
        category_headers=category_headers, category_rows=category_rows)


def write_report(run: str | Path) -> Path:
    """Rebuild `RUN/report.html` from `RUN/loop.json` (written by the loop)."""
    run = Path(run)
    state = check_finished(run)
    path = run / "report.html"
    atomic_write_bytes(path, render(run, state).encode())
    return path
