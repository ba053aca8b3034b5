"""The review stage: draw the sample into a store, serve it, compute the statistics, record them.

`open_review` draws the seeded sample from iter-K/filter/pairs into iter-K/review/review.sqlite
(once; a later call reuses it and refuses if the pairs or the sampling settings changed);
`simulate_review` answers it with simulated reviewers; `review_stats` computes the agreement
statistics and writes them, with the gate's verdict, into iter-K/review/manifest.json, plus a
`verdicts` table (pair_id -> review_status) that export can join onto the pairs.
"""

from __future__ import annotations

import logging
from collections import Counter

import datasets

from rlaif.config import PipelineConfig, config_hash
from rlaif.errors import RunError
from rlaif.records import VERDICT_FEATURES, StageManifest
from rlaif.review.gate import check_gate, store_path
from rlaif.review.sampler import check_pairs, draw_sample
from rlaif.review.simulated import simulate
from rlaif.review.stats import review_statistics
from rlaif.review.store import ReviewStore
from rlaif.runs import StageWriter, now, require_stage, stage_dir

log = logging.getLogger(__name__)

# Settings that decide which pairs are drawn and who sees them: changing them needs a new store.
SAMPLING_FIELDS = {"sample_size", "sample_fraction", "uncertain_quantile", "oversample_uncertain",
                   "oversample_inconsistent", "assignment", "reviewers", "overlap", "seed"}
STATUS_OF_LABEL = {"chosen": "agreed", "rejected": "disagreed", "tie": "tie", "both-bad": "both-bad"}
# When reviewers split evenly, the more cautious status wins.
CAUTION = ["disagreed", "both-bad", "tie", "agreed"]


def open_review(cfg: PipelineConfig, run: str, iteration: int = 0) -> ReviewStore:
    """The iteration's review store, drawing the sample on first use."""
    r = cfg.review
    seed = cfg.seed if r.seed is None else r.seed
    sampling = {**r.model_dump(mode="json", include=SAMPLING_FIELDS), "seed": seed}
    source = require_stage(run, "filter", iteration)
    fingerprint = source.fingerprint("pairs")
    path = store_path(run, iteration)
    if path.exists():
        store = ReviewStore(path)
        meta = store.meta()
        if meta.get("pairs_fingerprint") != fingerprint:
            raise RunError(f"{path}: the pairs in {stage_dir(run, 'filter', iteration)} changed since this sample was "
                           "drawn; its verdicts are about other pairs. Move the store away to draw a new sample.")
        changed = sorted(k for k in sampling if meta.get("sampling", {}).get(k) != sampling[k])
        if changed:
            raise RunError(f"{path}: drawn with other review settings ({', '.join('review.' + k for k in changed)}: "
                           f"{[meta.get('sampling', {}).get(k) for k in changed]} then, "
                           f"{[sampling[k] for k in changed]} now); "
                           "restore them to continue this review, or move the store away to draw a new sample.")
        return store
    pairs = source.table("pairs")
    check_pairs(pairs, f"{source.dir}/pairs")
    sample, design = draw_sample(pairs, r, seed)
    meta = {"design": design, "sampling": sampling, "assignment": r.assignment, "reviewers": r.reviewers,
            "overlap": r.overlap, "seed": seed, "pairs_fingerprint": fingerprint, "created_at": now()}
    log.info("review: drew %d of %d pairs into %s", len(sample), len(pairs), path)
    return ReviewStore.create(path, pairs, sample, meta)


def simulate_review(cfg: PipelineConfig, run: str, iteration: int = 0) -> dict[str, int]:
    """Answer the sample with `review.simulated_reviewers` simulated reviewers (labelled simulated)."""
    store = open_review(cfg, run, iteration)
    seed = cfg.seed if cfg.review.seed is None else cfg.review.seed
    return simulate(store, cfg.review.checker, cfg.review.simulated_reviewers, cfg.review.noise, seed)


def review_status(verdicts: list[dict]) -> dict[str, dict]:
    """pair_id -> majority review status over the standing verdicts (cautious on a split vote)."""
    by_pair: dict[str, list[str]] = {}
    for v in verdicts:
        by_pair.setdefault(v["pair_id"], []).append(STATUS_OF_LABEL[v["label"]])
    out = {}
    for pair_id, statuses in by_pair.items():
        counts = Counter(statuses)
        top = max(counts.values())
        status = next(s for s in CAUTION if counts.get(s) == top)
        out[pair_id] = {"review_status": status, "reviews": len(statuses)}
    return out


def review_stats(cfg: PipelineConfig, run: str, iteration: int = 0) -> StageManifest:
    """Compute the statistics and the gate; write them into iter-K/review/manifest.json."""
    store = open_review(cfg, run, iteration)
    meta = store.meta()
    verdicts = store.current_verdicts()
    stats = review_statistics(verdicts, meta["design"], store.reviewers())
    gate = check_gate(run, iteration, cfg.review.min_agreement, cfg.review.min_reviewed)
    stats["gate"] = {"passed": gate.passed, "message": gate.message, "min_agreement": cfg.review.min_agreement,
                     "min_reviewed": cfg.review.min_reviewed}
    status = review_status(verdicts)
    table = datasets.Dataset.from_dict({
        "pair_id": list(status), "review_status": [s["review_status"] for s in status.values()],
        "reviews": [s["reviews"] for s in status.values()], "simulated": [stats["simulated"]] * len(status)},
        features=VERDICT_FEATURES)
    # a snapshot of the verdicts so far: each call replaces the last one (the store beside it stays)
    writer = StageWriter(stage_dir(run, "review", iteration), stage="review", config_hash=config_hash(cfg.review),
                         input_fingerprint=meta["pairs_fingerprint"], config=cfg.review.model_dump(mode="json"),
                         num_shards=1, shard_size=len(status), overwrite=True)
    writer.write_shard(0, {"verdicts": table}, 0.0)
    manifest = writer.finish(stats)
    return manifest
