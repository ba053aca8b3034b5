"""`rlaif judge-eval`'s outputs: OUT/metrics.json (every figure) and OUT/report.html (the table per
category and the reliability diagram), both rebuilt whole on every run."""

from __future__ import annotations

import json
from pathlib import Path

from rlaif.report.figures import fmt
from rlaif.report.pages import PAGES
from rlaif.report.plots import reliability_plot
from rlaif.runs import atomic_write_bytes

HEADERS = ["pairs", "judged", "agreement", "agreement_ci95", "tie_rate", "position_consistency",
           "first_position_rate", "ece", "longer_answer_rate", "length_slope"]

def cell(row: dict, header: str) -> str:
    value = row.get(header)
    if header == "agreement_ci95" and value:
        return f"{value[0]:.3f} – {value[1]:.3f}"
    return "n/a" if value is None and header not in row else fmt(value)


ATTACK_COLUMNS = {"attack": "attack", "delimiters": "delimiters", "judged": "judged", "slot1_only": "slot 1 only",
                  "slot2_only": "slot 2 only", "both_orders": "both orders", "both_orders_filtered":
                  "both orders + filter", "kept": "kept by filter"}


def defence_rows(figures: dict) -> list[dict]:
    """The terminal's defences table: precision (95% interval) of the kept pairs, "n/a (0 kept)" when none is."""
    out = []
    for row in figures.get("defences") or []:
        ci = row["precision_ci95"]
        precision = "n/a (0 kept)" if not row["kept"] else f"{row['precision']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
        out.append({"defence": row["defence"], "kept": f"{row['kept']} of {row['judged']}",
                    "share kept": fmt(row["kept_share"]), "precision of kept": precision})
    return out


def attack_rows(result: dict) -> list[dict]:
    """The terminal's attack table: one row per attack and delimiter mode, columns named for people."""
    return [{title: "n/a" if row[key] is None else row[key] for key, title in ATTACK_COLUMNS.items()}
            for row in result["rows"]]


def render(figures: dict, source: str) -> str:
    rows = [("all", figures), *figures.get("by_split", {}).items(), *figures.get("by_category", {}).items()]
    title = f"{figures['judge_kind']} · {figures['judge_model']}"
    attacks = attack_rows(figures["injection"]) if figures.get("injection") else []
    return PAGES.get_template("judge_eval.html").render(
        figures=figures, source=source, headers=HEADERS, rows=rows, cell=cell, fmt=fmt,
        defences=defence_rows(figures), attacks=attacks,
        plot=reliability_plot(figures.get("reliability") or [], title))


def write(figures: dict, out: str | Path, source: str) -> dict[str, Path]:
    """OUT/metrics.json and OUT/report.html of one judge-eval."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "report": out / "report.html"}
    atomic_write_bytes(paths["metrics"], json.dumps({"pairs_source": source, **figures}, indent=2).encode())
    atomic_write_bytes(paths["report"], render(figures, source).encode())
    return paths
