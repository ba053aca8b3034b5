"""The loop's anchor set: one fixed labelled pair set scored by every iteration's judge, so its drift shows.

The figures are judge-eval's (`rlaif.judges.judge_eval.run_judge_eval`), written to RUN/iter-K/anchor/
(metrics.json, report.html); the loop keeps the headline ones in its iteration record.
"""

from __future__ import annotations

from pathlib import Path

from rlaif.judges import build_judge
from rlaif.judges import judge_eval as je
from rlaif.judges.pair_sets import load_pairs
from rlaif.runs import iteration_dir
from rlaif.stages.judge import close_judge

KEPT = ("pairs", "judged", "agreement", "agreement_ci95", "position_consistency", "first_position_rate", "flags")


def anchor_quality(cfg, run: Path, k: int) -> dict:
    """Score `cfg.loop.anchor_pairs` with iteration K's judge (`cfg.judge`); the headline figures and flags."""
    pairs = load_pairs(cfg.loop.anchor_pairs)
    judge = build_judge(cfg.judge, seed=cfg.seed)
    try:
        figures = je.run_judge_eval(judge, pairs, str(cfg.loop.anchor_pairs), iteration_dir(run, k) / "anchor")
    finally:
        close_judge(judge)
    return {"file": str(cfg.loop.anchor_pairs), **{key: figures.get(key) for key in KEPT},
            "report": figures["files"]["report"]}


def judge_flags(record: dict) -> list[str]:
    """What is wrong with an iteration's judge: the judge stage's warning, then the anchor set's flags."""
    out = []
    judged = (record.get("stages", {}).get("judge") or {}).get("summary") or {}
    if judged.get("warning"):
        out.append(f"on this iteration's comparisons, {judged['warning']}")
    out += [f"on the anchor set, {flag}" for flag in (record.get("anchor") or {}).get("flags") or []]
    return out
