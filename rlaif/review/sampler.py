"""Which pairs people review: a seeded, stratified sample that over-samples doubtful pairs.

Each pair falls in one cell, `category/class`, where class is `inconsistent` (the judge's verdict
flipped with the order), `uncertain` (margin in the lowest `uncertain_quantile`) or `confident`.
Cells are drawn by simple random sampling without replacement, with a size proportional to
(cell size x over-sampling factor). So the chance of a pair being drawn is exactly n_cell / N_cell,
and its weight N_cell / n_cell undoes the over-sampling when agreement is estimated for the set.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import datasets
import numpy as np

from rlaif.config import ReviewConfig
from rlaif.errors import InputError

DEFAULT_SAMPLE_SIZE = 100
REQUIRED_COLUMNS = ("pair_id", "prompt", "chosen", "rejected", "margin", "consistent")


@dataclass(frozen=True)
class SampledPair:
    row: int  # index into the pairs table
    cell: str
    weight: float  # N_cell / n_cell: how many pairs of the whole set this one stands for


def sample_size_of(cfg: ReviewConfig, total: int) -> int:
    if cfg.sample_fraction is not None:
        return max(1, min(total, round(cfg.sample_fraction * total)))
    return min(total, cfg.sample_size or DEFAULT_SAMPLE_SIZE)


def margin_threshold(margins: np.ndarray, quantile: float) -> float:
    """Margins at or below this are "uncertain"."""
    return float(np.quantile(margins, quantile)) if len(margins) else 0.0


def cell_of(category: str | None, consistent: bool | None, margin: float, threshold: float) -> str:
    kind = "inconsistent" if consistent is False else "uncertain" if margin <= threshold else "confident"
    return f"{category or 'all'}/{kind}"


def allocate(sizes: dict[str, int], factors: dict[str, float], total: int) -> dict[str, int]:
    """Split `total` draws across cells in proportion to size x factor, never past a cell's size.

    Every non-empty cell gets one draw first when the budget allows (so every stratum is seen),
    the rest goes by the highest-averages (D'Hondt) rule, which stays proportional under the caps.
    """
    alloc = {c: 0 for c in sizes}
    budget = min(total, sum(sizes.values()))
    if budget >= sum(1 for n in sizes.values() if n):
        for c, n in sizes.items():
            if n:
                alloc[c] = 1
                budget -= 1
    heap = [(-sizes[c] * factors[c] / (alloc[c] + 1), c) for c in sorted(sizes) if alloc[c] < sizes[c]]
    heapq.heapify(heap)
    while budget > 0 and heap:
        _, c = heapq.heappop(heap)
        alloc[c] += 1
        budget -= 1
        if alloc[c] < sizes[c]:
            heapq.heappush(heap, (-sizes[c] * factors[c] / (alloc[c] + 1), c))
    return alloc


def check_pairs(pairs: datasets.Dataset, source: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in pairs.column_names]
    if missing:
        raise InputError(f"{source}: the pairs table lacks column(s) {missing}; expected the PreferencePair "
                         f"columns of the filter stage ({', '.join(REQUIRED_COLUMNS)}, ...)")
    if len(pairs) == 0:
        raise InputError(f"{source}: the pairs table is empty; nothing to review")


def draw_sample(pairs: datasets.Dataset, cfg: ReviewConfig, seed: int) -> tuple[list[SampledPair], dict]:
    """The sample (in the order reviewers see it) and its design (cells, sizes, threshold) for the record."""
    margins = np.asarray(pairs["margin"], dtype=float)
    consistent = pairs["consistent"]
    categories = pairs["category"] if "category" in pairs.column_names else [None] * len(pairs)
    threshold = margin_threshold(margins, cfg.uncertain_quantile)
    cells: dict[str, list[int]] = {}
    for i, (cat, cons, m) in enumerate(zip(categories, consistent, margins)):
        cells.setdefault(cell_of(cat, cons, m, threshold), []).append(i)
    factor = {"inconsistent": cfg.oversample_inconsistent, "uncertain": cfg.oversample_uncertain, "confident": 1.0}
    sizes = {c: len(rows) for c, rows in cells.items()}
    factors = {c: factor[c.rsplit("/", 1)[1]] for c in cells}
    alloc = allocate(sizes, factors, sample_size_of(cfg, len(pairs)))
    rng = np.random.default_rng(seed)
    sample = []
    for c in sorted(cells):
        if alloc[c]:
            rows = rng.choice(cells[c], size=alloc[c], replace=False)
            sample += [SampledPair(int(r), c, sizes[c] / alloc[c]) for r in rows]
    order = rng.permutation(len(sample))
    sample = [sample[i] for i in order]
    quartiles = [float(q) for q in np.quantile(margins, [0.25, 0.5, 0.75])] if len(margins) else []
    design = {"total_pairs": len(pairs), "sample_size": len(sample), "seed": seed,
              "uncertain_margin_threshold": threshold, "margin_quartiles": quartiles,
              "cells": {c: {"pairs": sizes[c], "drawn": alloc[c], "factor": factors[c]} for c in sorted(cells)}}
    return sample, design


def assign(item_ids: list[int], mode: str, reviewers: list[str], overlap: float) -> dict[str, list[int]]:
    """Item ids per reviewer, in sample order. `all`: everyone gets everything. `split`: the first
    `overlap` share of the sample goes to everyone (for kappa between reviewers), the rest round-robin."""
    if mode == "all":
        return {r: list(item_ids) for r in reviewers}
    shared = math.ceil(overlap * len(item_ids))
    out = {r: list(item_ids[:shared]) for r in reviewers}
    for k, item in enumerate(item_ids[shared:]):
        out[reviewers[k % len(reviewers)]].append(item)
    return out
