"""The filter stage: judged candidates in, preference pairs and dropped rows (each with its reason) out.

`filter_shard` is the pure step over one judge shard (its `scores` and `comparisons` rows);
`filter_pairs` is the Python API over whole Datasets; `run_filter` streams the judge shards of a run
directory into `iter-K/filter/pairs/` and `iter-K/filter/dropped/`. Prompt deduplication is global (a
MinHash LSH index over every shard's prompts in shard order, so a resumed run decides exactly as a full
one); everything else is per prompt.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from functools import cache, partial
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rlaif.config import FilterConfig, PipelineConfig, config_hash
from rlaif.errors import InputError, RunError
from rlaif.records import (DROPPED_FEATURES, PAIR_FEATURES, PROVENANCE_COLUMNS, StageManifest, extra_columns,
                           with_columns)
from rlaif.runs import ShardPlan, Upstream, run_sharded, shard_files, shard_name
from rlaif.stages.filter.dedup import NearDuplicateIndex, near_duplicates, signatures
from rlaif.stages.filter.pairs import Comparison, pairs_of_prompt, rank_order, repeated_ngram_ratio

log = logging.getLogger(__name__)

REQUIRED_SCORES = ("prompt_id", "candidate_index", "prompt", "text", "score")


def prompt_text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages)


def dedup_prompts(rows: list[dict], index: NearDuplicateIndex | None) -> dict[str, tuple[str, float]]:
    """prompt_id -> (the kept prompt it duplicates, similarity), in first-seen order; updates `index`."""
    if index is None:
        return {}
    seen: dict[str, str] = {}
    for r in rows:
        seen.setdefault(r["prompt_id"], prompt_text(r["prompt"]))
    keys = list(seen)
    verdicts = index.add_many(keys, [seen[k] for k in keys])
    return {k: v for k, v in zip(keys, verdicts) if v is not None and v[0] != k}


def candidate_reason(row: dict, cfg: FilterConfig) -> tuple[str, str] | None:
    """Why one candidate is dropped before pairing, or None."""
    if cfg.drop_failures and (row.get("failure") or row.get("finish_reason") == "error"):
        return "generation_failure", row.get("failure") or "finish_reason=error"
    if cfg.drop_failures and (row.get("judge_failure") or (row.get("score") is None and row.get("rank") is None)):
        return "judge_failure", row.get("judge_failure") or "no score and no rank"
    if cfg.drop_empty and not row["text"].strip():
        return "empty", "blank text"
    if cfg.drop_truncated and row.get("finish_reason") == "length":
        return "truncated", f"finish_reason=length after {row.get('num_tokens')} tokens"
    if cfg.drop_degenerate:
        ratio = repeated_ngram_ratio(row["text"], cfg.degenerate_ngram)
        if ratio >= cfg.max_repeated_ngram_ratio:
            return "degenerate", f"repeated {cfg.degenerate_ngram}-gram ratio {ratio:.2f} >= {cfg.max_repeated_ngram_ratio}"
    return None


def _drop(out: dict[str, list], prompt_id: str, level: str, reason: str, detail: str, a: dict | None = None,
          b: dict | None = None, margin: float | None = None) -> None:
    out["prompt_id"].append(prompt_id)
    out["level"].append(level)
    out["reason"].append(reason)
    out["detail"].append(detail)
    out["candidate_index"].append(a["candidate_index"] if a else None)
    out["other_index"].append(b["candidate_index"] if b else None)
    out["text"].append(a["text"] if a else None)
    out["other_text"].append(b["text"] if b else None)
    out["score"].append(a.get("score") if a else None)
    out["other_score"].append(b.get("score") if b else None)
    out["margin"].append(margin)


def _comparisons(rows: list[dict], dropped: dict[str, list]) -> dict[str, dict[tuple[int, int], Comparison]]:
    """Usable comparisons per prompt; failed ones are recorded as dropped and not used."""
    out: dict[str, dict[tuple[int, int], Comparison]] = defaultdict(dict)
    for r in rows:
        if r.get("judge_failure") or r.get("preference") is None:
            _drop(dropped, r["prompt_id"], "comparison", "judge_failure", r.get("judge_failure") or "no preference",
                  {"candidate_index": r["candidate_a"], "text": None}, {"candidate_index": r["candidate_b"], "text": None})
            continue
        out[r["prompt_id"]][(r["candidate_a"], r["candidate_b"])] = Comparison(
            float(r["preference"]), r.get("consistent"), r.get("tie"))
    return out


def pair_reason(o, chosen: dict, rejected: dict, cfg: FilterConfig) -> tuple[str, str] | None:
    """Why a proposed, oriented pair is dropped, or None."""
    if o.tie:
        what = f"P(chosen) {o.preference:.3f} within tie band {cfg.tie_band}" if o.preference is not None else \
            f"score gap {o.margin:.4g} <= {cfg.score_tie}"
        return "tie", what
    if cfg.drop_inconsistent and o.consistent is False:
        return "inconsistent", "the verdict flips when the order of the candidates is swapped"
    if cfg.min_margin is not None and o.margin < cfg.min_margin:
        return "low_margin", f"margin {o.margin:.4g} < {cfg.min_margin}"
    if cfg.length_bias:
        lc, lr = len(chosen["text"]), max(len(rejected["text"]), 1)
        if lc / lr >= cfg.length_bias_ratio and o.margin < cfg.length_bias_max_margin:
            return "length_bias", (f"chosen {lc} chars vs rejected {lr} (x{lc / lr:.1f} >= {cfg.length_bias_ratio}) "
                                   f"with margin {o.margin:.4g} < {cfg.length_bias_max_margin}")
    return None


def filter_shard(scores: datasets.Dataset, comparisons: datasets.Dataset | None, cfg: FilterConfig, *, seed: int = 0,
                 duplicates: dict[str, tuple[str, float]] | None = None) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Pairs and dropped rows of one shard. `duplicates`: prompt_id -> (original, similarity) from `dedup_prompts`."""
    missing = [c for c in REQUIRED_SCORES if c not in scores.column_names]
    if missing:
        raise InputError(f"the scores table lacks column(s) {missing}; expected the judge stage's scores "
                         f"({', '.join(REQUIRED_SCORES)}, ...)")
    extras = extra_columns(scores.features)
    rows = scores.to_list()
    pairs: dict[str, list] = {c: [] for c in [*PAIR_FEATURES, *extras]}
    dropped: dict[str, list] = {c: [] for c in DROPPED_FEATURES}
    comps = _comparisons(comparisons.to_list(), dropped) if comparisons is not None else {}
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_prompt[r["prompt_id"]].append(r)
    duplicates = duplicates or {}
    sigs: dict[tuple[str, int], object] = {}
    if cfg.dedup_responses:  # one bulk MinHash call per shard, not one per prompt
        todo = [r for r in rows if r["prompt_id"] not in duplicates]
        for r, sig in zip(todo, signatures([r["text"] for r in todo], cfg.dedup_num_perm, cfg.dedup_ngram)):
            sigs[(r["prompt_id"], r["candidate_index"])] = sig.hashvalues
    for prompt_id, cands in by_prompt.items():
        if prompt_id in duplicates:
            original, sim = duplicates[prompt_id]
            _drop(dropped, prompt_id, "prompt", "duplicate_prompt",
                  f"{len(cands)} candidates; duplicate of prompt {original} (similarity {sim:.2f})")
            continue
        kept = []
        for c in cands:
            why = candidate_reason(c, cfg)
            if why:
                _drop(dropped, prompt_id, "candidate", why[0], why[1], c)
            else:
                kept.append(c)
        ranked = rank_order(kept)
        if cfg.dedup_responses and len(ranked) > 1:
            verdicts = near_duplicates([c["text"] for c in ranked], cfg.dedup_threshold, cfg.dedup_num_perm,
                                       cfg.dedup_ngram, [sigs[(prompt_id, c["candidate_index"])] for c in ranked])
            for c, v in zip(ranked, verdicts):
                if v is not None:
                    _drop(dropped, prompt_id, "candidate", "duplicate_response",
                          f"duplicate of candidate {ranked[v[0]]['candidate_index']} (similarity {v[1]:.2f})",
                          c, ranked[v[0]])
            ranked = [c for c, v in zip(ranked, verdicts) if v is None]
        if len(ranked) == 1:
            _drop(dropped, prompt_id, "prompt", "too_few_candidates", "1 candidate left after the filters", ranked[0])
            continue
        if len(ranked) == 0:
            continue
        best = max((c["score"] for c in ranked if c.get("score") is not None), default=None)
        if cfg.min_best_score is not None and (best is None or best < cfg.min_best_score):
            _drop(dropped, prompt_id, "prompt", "low_quality",
                  f"best score {best} < min_best_score {cfg.min_best_score}", ranked[0])
            continue
        rng = random.Random(f"{seed}:{prompt_id}")
        for o, ch, rj in pairs_of_prompt(ranked, comps.get(prompt_id, {}), strategy=cfg.strategy, top_k=cfg.top_k,
                                         tie_band=cfg.tie_band, score_tie=cfg.score_tie, rng=rng):
            why = pair_reason(o, ch, rj, cfg)
            if why:
                _drop(dropped, prompt_id, "pair", why[0], why[1], ch, rj, o.margin)
                continue
            _add_pair(pairs, prompt_id, o, ch, rj, cfg.strategy, extras)
    features = with_columns(PAIR_FEATURES, {c: scores.features[c] for c in extras})
    return (datasets.Dataset.from_dict(pairs, features=features),
            datasets.Dataset.from_dict(dropped, features=DROPPED_FEATURES))


def _add_pair(pairs: dict[str, list], prompt_id: str, o, ch: dict, rj: dict, strategy: str, extras: list[str]) -> None:
    pairs["pair_id"].append(f"{prompt_id}/{o.chosen}>{o.rejected}")
    pairs["prompt_id"].append(prompt_id)
    pairs["prompt"].append(ch["prompt"])
    pairs["chosen"].append([{"role": "assistant", "content": ch["text"]}])
    pairs["rejected"].append([{"role": "assistant", "content": rj["text"]}])
    pairs["chosen_index"].append(o.chosen)
    pairs["rejected_index"].append(o.rejected)
    pairs["chosen_score"].append(ch.get("score"))
    pairs["rejected_score"].append(rj.get("score"))
    pairs["margin"].append(float(o.margin))
    pairs["preference"].append(o.preference)
    pairs["consistent"].append(o.consistent)
    pairs["strategy"].append(strategy)
    for c in PROVENANCE_COLUMNS:
        pairs[c].append(ch.get(c) or "")
    pairs["review_status"].append("unreviewed")
    for c in extras:
        pairs[c].append(ch.get(c))


def _by_prompt_shards(scores: datasets.Dataset, shard_size: int) -> list[tuple[int, int]]:
    """Row ranges of whole prompts, about `shard_size` candidates each (rows of a prompt are contiguous)."""
    ids = scores["prompt_id"]
    ranges, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (i - start >= shard_size and ids[i] != ids[i - 1]):
            ranges.append((start, i))
            start = i
    return ranges


def filter_pairs(scores: datasets.Dataset, comparisons: datasets.Dataset | None = None, *, seed: int = 0,
                 shard_size: int = 4096, **settings) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Python API: (pairs, dropped) from a judge's scores (and comparisons) table; `settings` are FilterConfig fields."""
    cfg = FilterConfig(**settings)
    index = NearDuplicateIndex(cfg.dedup_threshold, cfg.dedup_num_perm, cfg.dedup_ngram) if cfg.dedup_prompts else None
    groups: dict[str, list[int]] = defaultdict(list)
    for i, pid in enumerate(scores["prompt_id"]):  # each prompt's rows together, prompts in first-seen order
        groups[pid].append(i)
    scores = scores.select([i for rows in groups.values() for i in rows])
    outs = []
    for a, b in _by_prompt_shards(scores, shard_size) or [(0, 0)]:
        shard = scores.select(range(a, b))
        ids = set(shard["prompt_id"])
        comp = comparisons.filter(lambda r: r["prompt_id"] in ids) if comparisons is not None else None
        outs.append(filter_shard(shard, comp, cfg, seed=seed, duplicates=dedup_prompts(shard.to_list(), index)))
    return (datasets.concatenate_datasets([o[0] for o in outs]), datasets.concatenate_datasets([o[1] for o in outs]))


def _read(path: Path) -> datasets.Dataset | None:
    # a fingerprint from the path spares datasets hashing the whole table
    return datasets.Dataset(pq.read_table(path), fingerprint=f"filter-input-{abs(hash(str(path)))}") if path.exists() else None


def run_filter(cfg: PipelineConfig, run: str, *, iteration: int = 0, overwrite: bool = False,
               progress: bool = True, record: bool = False) -> StageManifest:
    """Filter the judge stage of `run/iter-K` into `iter-K/filter/`, one output shard per judge shard."""
    return run_sharded("filter", run, iteration, partial(filter_plan, cfg), after="judge", overwrite=overwrite,
                       progress=progress, record=cfg if record else None)


def filter_plan(cfg: PipelineConfig, upstream: Upstream) -> ShardPlan:
    """One filter shard per judge shard; prompt duplicates are decided first, over every shard in order."""
    f = cfg.filter
    num_shards = upstream.manifest.num_shards
    index = NearDuplicateIndex(f.dedup_threshold, f.dedup_num_perm, f.dedup_ngram) if f.dedup_prompts else None

    @cache
    def prompts() -> list[tuple[dict, int]]:
        """Per judge shard: its duplicate prompts and how many prompts it holds (read once, when first needed).

        The index is global and sees the shards in order, so a resumed run decides exactly as a full one.
        """
        out = []
        for i in range(num_shards):
            rows = pq.read_table(upstream.dir / "scores" / shard_name(i), columns=["prompt_id", "prompt"]).to_pylist()
            out.append((dedup_prompts(rows, index), len({r["prompt_id"] for r in rows})))
        return out

    def shard_input(i: int) -> datasets.Dataset:
        scores = _read(upstream.dir / "scores" / shard_name(i))
        if scores is None:
            raise RunError(f"{upstream.dir}/scores/{shard_name(i)}: listed in the judge manifest but missing")
        return scores

    def work(state, i: int, scores: datasets.Dataset) -> dict[str, datasets.Dataset]:
        pairs, dropped = filter_shard(scores, _read(upstream.dir / "comparisons" / shard_name(i)), f, seed=cfg.seed,
                                      duplicates=prompts()[i][0])
        return {"pairs": pairs, "dropped": dropped}

    def counts(i: int, tables: dict[str, datasets.Dataset]) -> dict:
        return {"candidates": rows[i], "prompts": prompts()[i][1], "pairs": len(tables["pairs"]),
                **{f"dropped.{k}": v for k, v in Counter(tables["dropped"]["reason"]).items()}}

    rows = [upstream.manifest.shards[f"{i:05d}"].rows.get("scores", 0) for i in range(num_shards)]
    return ShardPlan(
        config={**f.model_dump(mode="json"), "seed": cfg.seed}, config_hash=config_hash(f, cfg.seed),
        input_fingerprint=upstream.fingerprint("scores", "comparisons"), shard_size=upstream.manifest.shard_size,
        shard_rows=rows, shard_input=shard_input, work=work, setup=lambda: None, counts=counts,
        summarise=lambda writer: summarise(writer.dir, writer.manifest, len(index) if index is not None else None),
        unit="candidates")


def _lengths(table: pa.Table, column: str) -> np.ndarray:
    """Characters of the assistant turn of each row (`chosen` / `rejected` hold one message)."""
    flat = pc.list_flatten(table.column(column))
    return pc.utf8_length(pc.struct_field(flat, "content")).to_numpy(zero_copy_only=False)


def _quantiles(x: np.ndarray) -> str:
    if len(x) == 0:
        return "n/a"
    p10, p50, p90 = np.percentile(x, [10, 50, 90])
    return f"{x.mean():.3g} / {p10:.3g} / {p50:.3g} / {p90:.3g}"


def summarise(directory: Path, manifest: StageManifest, index_size: int | None = None) -> dict:
    """The report: rows each filter dropped, pairs left, margin and length distributions (read back from the shards)."""
    totals: Counter = Counter()
    for shard in manifest.shards.values():
        totals.update(shard.counts)
    tables = [pq.read_table(p, columns=["margin", "chosen", "rejected"]) for p in shard_files(directory, "pairs")]
    table = pa.concat_tables(tables) if tables else None
    margin = table.column("margin").to_numpy() if table is not None else np.array([])
    chosen = _lengths(table, "chosen") if table is not None else np.array([])
    rejected = _lengths(table, "rejected") if table is not None else np.array([])
    drops = {k: int(v) for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if k.startswith("dropped.")}
    summary = {"candidates": int(totals["candidates"]), "prompts": int(totals["prompts"]), "pairs": int(totals["pairs"]),
               "dropped rows": sum(drops.values()), **drops,
               "margin mean / p10 / p50 / p90": _quantiles(margin),
               "chosen chars mean / p10 / p50 / p90": _quantiles(chosen),
               "rejected chars mean / p10 / p50 / p90": _quantiles(rejected),
               "chosen longer than rejected": f"{float(np.mean(chosen > rejected)):.3f}" if len(chosen) else "n/a"}
    if index_size is not None:
        summary["distinct prompts in dedup index"] = index_size
    return summary
