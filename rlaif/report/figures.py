"""The figures of a run, per iteration, as the report and the terminal show them; and the loop's exit code.

Every column is named once here (`COLUMNS`): the HTML report shows all of them, `rlaif run` the
ones marked `terminal`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from rlaif.stats import paired_test

# `rlaif run` exits with these when the loop did not complete (2 is a user error, as for every command).
EXIT_WAITING_FOR_REVIEW = 3
EXIT_GATE_FAILED = 4


def value_of(d: dict | None, key: str):
    v = (d or {}).get(key)
    return v.get("value") if isinstance(v, dict) else v


def ci_of(d: dict | None, key: str):
    v = (d or {}).get(key)
    return v.get("ci95") if isinstance(v, dict) else None


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def with_ci(d: dict | None, key: str) -> str:
    v, ci = value_of(d, key), ci_of(d, key)
    if v is None:
        return "–"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def drops(filter_summary: dict) -> dict[str, int]:
    """`dropped.<reason>` counts of a filter manifest summary, by reason."""
    return {k.split(".", 1)[1]: v for k, v in (filter_summary or {}).items() if k.startswith("dropped.")}


def stage_seconds(it: dict) -> dict[str, float]:
    """Seconds per stage: the stage's own manifest (which survives a resume), else the loop's wall clock."""
    times = dict(it.get("times", {}))
    for stage, figures in it.get("stages", {}).items():
        if figures.get("seconds"):
            times[stage] = figures["seconds"]
    if (it.get("train") or {}).get("train_seconds"):
        times["train"] = it["train"]["train_seconds"]
    return times


def summary_of(it: dict, stage: str) -> dict:
    return it.get("stages", {}).get(stage, {}).get("summary", {})


def agreement(it: dict) -> str:
    review = it.get("review") or {}
    value, ci = review.get("agreement"), review.get("ci95")
    if value is None or not ci:
        return "–"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" + (" (simulated)" if review.get("simulated") else "")


def anchor_agreement(it: dict) -> str:
    anchor = it.get("anchor") or {}
    value, ci = anchor.get("agreement"), anchor.get("agreement_ci95")
    return "–" if value is None else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def paired(a: dict | None, b: dict | None, key: str = "greedy_accuracy") -> dict | None:
    """The exact McNemar test of two policies' `key` outcomes (`rlaif.stats.paired_test`), or None when either
    lacks per-prompt outcomes, they were measured on different prompts, or they are not one answer per prompt."""
    x, y = (a or {}).get(key), (b or {}).get(key)
    if not (isinstance(x, dict) and isinstance(y, dict) and "passed_per_prompt" in x and "passed_per_prompt" in y):
        return None
    if x.get("prompts_digest") != y.get("prompts_digest") or max(x["passed_per_prompt"] + y["passed_per_prompt"],
                                                                   default=0) > 1:
        return None
    return paired_test(x["passed_per_prompt"], y["passed_per_prompt"])


def fmt_paired(test: dict | None) -> str:
    """`+0.085 (17 vs 0 prompts, p=.000)`: the difference in pass rate, the discordant prompts each way, p."""
    if test is None:
        return "–"
    return f"{test['difference']:+.3f} ({test['a_only']} vs {test['b_only']} prompts, p={test['p_value']:.3f})"


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[dict], object]  # an iteration record of RUN/loop.json -> the cell
    terminal: bool = False  # also in `rlaif run`'s table
    baseline: Callable[[dict], object] | None = None  # the starting policy's cell, if the column has one
    optional: bool = False  # left out of the terminal's table when no iteration has a value


COLUMNS = [
    Column("iter", lambda it: it["iteration"], True, lambda base: "start"),
    Column("candidates", lambda it: summary_of(it, "generate").get("candidates"), True),
    Column("pairs kept", lambda it: summary_of(it, "filter").get("pairs"), True),
    Column("dropped", lambda it: sum(drops(summary_of(it, "filter")).values()) if summary_of(it, "filter") else None,
           True),
    Column("judge consistency", lambda it: summary_of(it, "judge").get("position_consistency")),
    Column("judge 1st-slot rate", lambda it: summary_of(it, "judge").get("first_position_rate")),
    Column("judge-human agreement", agreement, True),
    Column("anchor agreement [95% CI]", anchor_agreement, True, optional=True),
    Column("anchor consistency", lambda it: fmt((it.get("anchor") or {}).get("position_consistency")), True,
           optional=True),
    Column("anchor 1st-slot rate", lambda it: fmt((it.get("anchor") or {}).get("first_position_rate")), True,
           optional=True),
    Column("RM accuracy", lambda it: with_ci(it.get("metrics"), "reward_model_accuracy")),
    Column("win rate vs prev", lambda it: fmt(value_of(it.get("metrics"), "win_rate"))),
    Column("greedy acc. [95% CI]", lambda it: with_ci(it.get("metrics"), "greedy_accuracy"), True,
           lambda base: with_ci(base, "greedy_accuracy")),
    Column("sampled acc. [95% CI]", lambda it: with_ci(it.get("metrics"), "sampled_accuracy"), True,
           lambda base: with_ci(base, "sampled_accuracy")),
    Column("control greedy acc.", lambda it: with_ci(it.get("control"), "greedy_accuracy"), True),
    Column("policy - control, paired", lambda it: fmt_paired(paired(it.get("metrics"), it.get("control"))), True,
           optional=True),
    Column("time per stage", lambda it: ", ".join(f"{k} {v:.0f}s" for k, v in stage_seconds(it).items())),
]


def iteration_rows(state: dict, columns: list[Column] = COLUMNS) -> list[list]:
    """One row per iteration of RUN/loop.json, one cell per column."""
    return [[c.cell(it) for c in columns] for it in state["iterations"]]


def loop_table(state: dict, run: Path) -> Table:
    """The terminal's table of a run: the starting policy, then one row per iteration."""
    columns = [c for c in COLUMNS if c.terminal and not (
        c.optional and all(c.cell(it) in (None, "–") for it in state["iterations"]))]
    table = Table(title=f"rlaif run · {run}", header_style="bold")
    for c in columns:
        table.add_column(c.header, justify="right")
    if state.get("baseline"):
        table.add_row(*[str(c.baseline(state["baseline"])) if c.baseline else "" for c in columns])
    for row in iteration_rows(state, columns):
        table.add_row(*[str(cell) for cell in row])
    return table


def exit_code(state: dict) -> int:
    """0 when the loop finished or stopped early on its own, else why it stopped."""
    if state["status"] == "waiting-for-review":
        return EXIT_WAITING_FOR_REVIEW
    gates = [(it.get(gate) or {}).get("passed") for it in state["iterations"] for gate in ("review", "judge_gate")]
    if state["status"] == "stopped" and False in gates:
        return EXIT_GATE_FAILED
    return 0


def category_table(state: dict, key: str = "greedy_accuracy") -> tuple[list[str], list[list]]:
    """The checked rate per category (and per seen / held-out split of the categories), for the start, each
    iteration's policy and its control: headers, then one row per category, each cell a rate with its interval."""
    figures = [("start", state.get("baseline") or {})]
    for it in state["iterations"]:
        figures.append((f"after iter {it['iteration']}", it.get("metrics") or {}))
        if it.get("control"):
            figures.append((f"control, iter {it['iteration']}", it["control"]))
    flat = [(name, {"all": f[key], **f[key].get("by_split", {}), **f[key].get("by_category", {})})
            for name, f in figures if isinstance(f.get(key), dict)]
    if not any(f[key].get("by_category") for _, f in figures if isinstance(f.get(key), dict)):
        return [], []
    names = list(dict.fromkeys(n for _, groups in flat for n in groups))
    rows = [[n, *(with_ci(groups, n) + f" n={groups[n]['n']}" if n in groups else "–" for _, groups in flat)]
            for n in names]
    return ["category", *(name for name, _ in flat)], rows


API_HEADERS = ["iter", "stage", "model", "answers paid", "ledger hits", "input tokens", "output tokens",
               "via Batch API", "cost (USD)"]


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
