"""Pairs tables for the review tests: the toy task, judged by a pretend judge, written like the filter stage.

The judge's `chosen` is right most of the time, less often when its margin is small; some pairs are
position-inconsistent, some have two wrong or two right answers (for both-bad and tie verdicts).
"""

from __future__ import annotations

import random
from pathlib import Path

import datasets

from rlaif.runs import StageWriter, stage_dir


def pair_row(i: int, question: str, chosen: str, rejected: str, margin: float, consistent: bool | None,
             category: str, solution: str) -> dict:
    return {"pair_id": f"pair-{i:04d}", "prompt_id": f"p{i}", "prompt": [{"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": chosen}], "rejected": [{"role": "assistant", "content": rejected}],
            "chosen_index": 0, "rejected_index": 1, "chosen_score": 0.5 + margin / 2, "rejected_score": 0.5 - margin / 2,
            "margin": margin, "consistent": consistent, "judge_kind": "likelihood", "judge_model": "toy:judge",
            "template_sha256": None, "review_status": "unreviewed", "category": category, "solution": solution}


def toy_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randrange(100), rng.randrange(100)
        right, wrong = str(a + b), str(a + b + rng.choice([-10, -1, 1, 2, 10]))
        margin = round(rng.random(), 4)
        consistent = rng.random() > 0.15
        kind = rng.random()
        if kind < 0.08:
            chosen, rejected = wrong, str(a + b + 3)  # both wrong
        elif kind < 0.12:
            chosen, rejected = right, f" {right}"  # both right (the checker strips)
        elif rng.random() < (0.55 if margin < 0.25 or not consistent else 0.9):
            chosen, rejected = right, wrong
        else:
            chosen, rejected = wrong, right
        category = "carry" if (a % 10 + b % 10) >= 10 else "no-carry"
        rows.append(pair_row(i, f"What is {a}+{b}?", chosen, rejected, margin, consistent, category, right))
    return rows


def write_pairs(run: Path, rows: list[dict], iteration: int = 0, shards: int = 2, overwrite: bool = False) -> Path:
    """Write rows as iter-K/filter/pairs shards + manifest, the layout the filter stage writes."""
    directory = stage_dir(run, "filter", iteration)
    size = -(-len(rows) // shards)
    writer = StageWriter(directory, stage="filter", config_hash="test", input_fingerprint="test", config={},
                         num_shards=shards, shard_size=size, overwrite=overwrite)
    for k in range(shards):
        part = rows[k * size:(k + 1) * size]
        writer.write_shard(k, {"pairs": datasets.Dataset.from_list(part)}, 0.0, {"pairs": len(part)})
    writer.finish({"pairs": len(rows)})
    return directory
