"""The judge stage: candidates in, `scores` (one row per candidate) and `comparisons` out.

`judge_shard` is the pure step (a Dataset of candidates -> the two tables); `judge` is the Python
API; `run_judge` runs the stage over a run directory in resumable shards of whole prompts. The
tables' columns are SCORE_FEATURES and COMPARISON_FEATURES in `rlaif/records.py`.
"""

from __future__ import annotations

import logging
from functools import partial

import datasets
import numpy as np

from rlaif.config import JudgeConfig, PipelineConfig, config_hash
from rlaif.engines.ledger import CallLedger, attach_ledger, usage_summary
from rlaif.engines import resolve_model
from rlaif.functions import load_function
from rlaif.judges import CandidateItem, build_judge
from rlaif.judges.prompting import judge_template
from rlaif.judges.ranking import rank_groups
from rlaif.records import (CARRIED_COLUMNS, COMPARISON_FEATURES, JUDGE_FEATURES, PROVENANCE_COLUMNS, SCORE_FEATURES,
                           StageManifest, extra_columns, with_columns)
from rlaif.runs import ShardPlan, Upstream, load_table, run_sharded

log = logging.getLogger(__name__)

THROUGHPUT_ONLY = {"batch_size", "max_concurrency", "timeout_s", "max_retries", "api_key_env", "shard_size"}
# The judge's own columns of a scores row (the provenance columns are the judge's, the same on every row).
VERDICT_COLUMNS = [c for c in JUDGE_FEATURES if c not in PROVENANCE_COLUMNS]
NOT_JUDGED = {**dict.fromkeys(VERDICT_COLUMNS), "judge_failure": "not judged: generation failed"}


def judge_shard(candidates: datasets.Dataset, judge, *, schedule: str = "all-pairs", ranking: str = "bradley-terry",
                tie_band: float = 0.05) -> dict[str, datasets.Dataset]:
    """Judge one shard of candidates: {"scores": ..., "comparisons": ...} (comparisons for pairwise judges)."""
    rows = candidates.to_list()
    extras = extra_columns(candidates.features)
    judged = [k for k, r in enumerate(rows) if r["failure"] is None]
    verdicts: list[dict] = [NOT_JUDGED] * len(rows)
    tables: dict[str, datasets.Dataset] = {}
    if judge.kind == "pairwise":
        groups: dict[str, list[tuple[int, str]]] = {}
        prompts, where = {}, {}
        for k in judged:
            r = rows[k]
            groups.setdefault(r["prompt_id"], []).append((r["candidate_index"], r["text"]))
            prompts[r["prompt_id"]] = r["prompt"]
            where[(r["prompt_id"], r["candidate_index"])] = k
        judgments, ranked = rank_groups(groups, prompts, judge, schedule, ranking, tie_band) if groups else ([], {})
        for pid, per in ranked.items():
            for index, (strength, rank) in per.items():
                verdicts[where[(pid, index)]] = {**dict.fromkeys(VERDICT_COLUMNS), "score": strength,
                                                 "strength": strength, "rank": rank}
        comps = [j.model_dump() for j in judgments]
        tables["comparisons"] = datasets.Dataset.from_dict(
            {c: [row[c] for row in comps] for c in COMPARISON_FEATURES}, features=COMPARISON_FEATURES)
    else:
        items = [CandidateItem(rows[k]["prompt"], rows[k]["text"], {c: rows[k][c] for c in extras}) for k in judged]
        for k, s in zip(judged, judge.score(items) if items else []):
            verdicts[k] = {**dict.fromkeys(VERDICT_COLUMNS), "score": s.score, "score_distribution": s.distribution,
                           "judge_failure": s.failure, "raw_text": s.raw_text}
        _rank_by_score(rows, verdicts)
    out = {c: [r[c] for r in rows] for c in [*CARRIED_COLUMNS, *extras]}
    out.update({c: [v[c] for v in verdicts] for c in VERDICT_COLUMNS})
    out.update({c: [value] * len(rows) for c, value in judge.provenance.columns().items()})
    features = with_columns({c: SCORE_FEATURES[c] for c in CARRIED_COLUMNS},
                            {c: candidates.features[c] for c in extras}, JUDGE_FEATURES)
    tables["scores"] = datasets.Dataset.from_dict(out, features=features)
    return tables


def _rank_by_score(rows: list[dict], verdicts: list[dict]) -> None:
    """Scoring judges: rank each prompt's scored candidates by score (0 = best); strength stays null."""
    by_prompt: dict[str, list[int]] = {}
    for k, r in enumerate(rows):
        if verdicts[k]["score"] is not None:
            by_prompt.setdefault(r["prompt_id"], []).append(k)
    for ks in by_prompt.values():
        for rank, k in enumerate(sorted(ks, key=lambda k: (-verdicts[k]["score"], rows[k]["candidate_index"]))):
            verdicts[k] = {**verdicts[k], "rank": rank}


def prompt_bounds(prompt_ids: list[str]) -> list[tuple[int, int]]:
    """Row ranges of consecutive runs of one prompt id (the generate stage writes a prompt's candidates together)."""
    bounds, start = [], 0
    for k in range(1, len(prompt_ids) + 1):
        if k == len(prompt_ids) or prompt_ids[k] != prompt_ids[start]:
            bounds.append((start, k))
            start = k
    return bounds


def judge(dataset: datasets.Dataset, judge, *, schedule: str = "all-pairs", ranking: str = "bradley-terry",
          tie_band: float = 0.05, shard_size: int = 64, comparisons: bool = False):
    """Python API: the `scores` table of a candidates Dataset (and the comparisons if asked).

    `judge` is a judge object (`rlaif.judges.build_judge(JudgeConfig(...))`) or a `JudgeConfig`.
    """
    if isinstance(judge, JudgeConfig):
        judge = build_judge(judge)
    bounds = prompt_bounds(dataset["prompt_id"])
    outs = []
    for s in range(0, len(bounds), shard_size):
        chunk = bounds[s:s + shard_size]
        outs.append(judge_shard(dataset.select(range(chunk[0][0], chunk[-1][1])), judge, schedule=schedule,
                                ranking=ranking, tie_band=tie_band))
    scores = datasets.concatenate_datasets([o["scores"] for o in outs])
    if not comparisons:
        return scores
    return scores, datasets.concatenate_datasets([o["comparisons"] for o in outs if "comparisons" in o]) \
        if judge.kind == "pairwise" else None


def shard_counts(tables: dict[str, datasets.Dataset]) -> dict[str, int | float]:
    s = tables["scores"]
    counts = {"candidates": len(s), "scored": sum(v is not None for v in s["score"]),
              "judge_failures": sum(f is not None for f in s["judge_failure"])}
    if "comparisons" in tables:
        c = tables["comparisons"]
        counts.update(comparisons=len(c), comparison_failures=sum(f is not None for f in c["judge_failure"]))
    return counts


def summarise(directory, kind: str, seconds: float) -> dict:
    """The stage summary: throughput, failures, position consistency, first-slot rate, distributions."""
    scores = load_table(directory, "scores")
    values = np.array([v for v in scores["score"] if v is not None], dtype=float)
    summary: dict = {"judge_kind": kind, "candidates": len(scores), "scored": int(len(values)),
                     "judge_failures": sum(f is not None for f in scores["judge_failure"]),
                     "parse_failures": sum(f is not None and "parse failed" in f for f in scores["judge_failure"]),
                     "judge_seconds": round(seconds, 2)}
    if len(values):
        q = np.quantile(values, [0, 0.25, 0.5, 0.75, 1])
        summary.update(score_mean=round(float(values.mean()), 4), score_std=round(float(values.std()), 4),
                       score_quartiles=" / ".join(f"{x:.3g}" for x in q))
    if kind == "pairwise":
        comps = load_table(directory, "comparisons")
        ok = [k for k, p in enumerate(comps["preference"]) if p is not None]
        firsts = [p for col in ("p_a_first", "p_b_first") for p in comps[col] if p is not None]
        prefs = np.array([comps["preference"][k] for k in ok], dtype=float)
        summary.update(
            comparisons=len(comps),
            parse_failures=sum(f is not None and "parse failed" in f for f in comps["judge_failure"]),
            comparison_failures=len(comps) - len(ok),
            comparisons_per_s=round(len(comps) / seconds, 2) if seconds else None,
            judgments_per_s=round(2 * len(comps) / seconds, 2) if seconds else None,
            position_consistency=round(sum(comps["consistent"][k] for k in ok) / len(ok), 4) if ok else None,
            first_position_rate=round(sum(p > 0.5 for p in firsts) / len(firsts), 4) if firsts else None,
            tie_rate=round(sum(comps["tie"][k] for k in ok) / len(ok), 4) if ok else None,
            preference_mean_margin=round(float(np.abs(prefs - 0.5).mean()), 4) if ok else None,
        )
    else:
        summary["judgments_per_s"] = round(len(scores) / seconds, 2) if seconds else None
    return summary


def run_judge(cfg: PipelineConfig, run: str, *, iteration: int = 0, overwrite: bool = False, progress: bool = True,
              engine=None, record: bool = False) -> StageManifest:
    """Run the judge stage into `run/iter-K/judge/`, resuming finished shards.

    `engine`: an engine the caller owns and keeps (local executor), instead of loading `judge.model`.
    """
    plan = partial(judge_plan, cfg, engine=engine, run=run, iteration=iteration, overwrite=overwrite)
    return run_sharded("judge", run, iteration, plan, after="generate", overwrite=overwrite, progress=progress,
                       record=cfg if record else None)


def judge_plan(cfg: PipelineConfig, upstream: Upstream, engine=None, run: str | None = None, iteration: int = 0,
               overwrite: bool = False) -> ShardPlan:
    """The judge stage's shards: `judge.shard_size` whole prompts' candidates each.

    A model judge on an openai engine this stage builds answers from and into the run's call ledger.
    """
    j = cfg.judge
    candidates = upstream.table("candidates")
    template_sha = None
    if j.kind != "verifier" and j.engine != "openai" and engine is None and j.model:
        resolve_model(j.model, "judge.model")  # a bad model name fails here, before the run directory is touched
    if j.kind == "verifier":  # a bad module:function fails here, before the run directory is touched
        load_function(j.verifier, "judge.verifier")
    if j.kind in ("pairwise", "pointwise"):
        template_sha = judge_template(j.template or ("pairwise" if j.kind == "pairwise" else "additive")).sha256
    bounds = prompt_bounds(candidates["prompt_id"])
    chunks = [bounds[s:s + j.shard_size] for s in range(0, len(bounds), j.shard_size)] or [[]]
    borrowed = engine is not None and cfg.executor == "local"
    ledger = CallLedger.for_run(run, "judge", iteration, fresh=overwrite) if run is not None and engine is None \
        and j.engine == "openai" and j.kind in ("pairwise", "pointwise", "likelihood") else None

    def shard_input(i: int) -> datasets.Dataset:
        chunk = chunks[i]
        return candidates.select(range(chunk[0][0], chunk[-1][1])) if chunk else candidates.select([])

    def summary(writer) -> dict:
        out = summarise(writer.dir, j.kind, sum(s.seconds for s in writer.manifest.shards.values()))
        return {**out, **usage_summary(ledger, "judge", iteration, cfg.pricing)} if ledger is not None else out

    return ShardPlan(
        config={**j.model_dump(mode="json", exclude=THROUGHPUT_ONLY), "seed": cfg.seed, "template_sha256": template_sha},
        config_hash=config_hash(j, cfg.seed, template_sha, exclude=THROUGHPUT_ONLY),
        input_fingerprint=upstream.fingerprint("candidates"),
        shard_size=j.shard_size,
        shard_rows=[chunk[-1][1] - chunk[0][0] if chunk else 0 for chunk in chunks],
        shard_input=shard_input,
        work=partial(judge_work, schedule=j.schedule, ranking=j.ranking, tie_band=j.tie_band),
        setup=partial(build_judge, j, engine, cfg.seed) if borrowed else partial(judge_replica, j, cfg.seed, ledger),
        teardown=None if borrowed else close_judge,
        counts=lambda i, tables: shard_counts(tables),
        summarise=summary,
        unit="candidates", executor=cfg.executor, ray_config=cfg.ray)


def judge_replica(j: JudgeConfig, seed: int, ledger: CallLedger | None = None):
    """The judge one worker holds; an openai engine it builds answers from and into the run's ledger."""
    judge_obj = build_judge(j, None, seed)
    attach_ledger(getattr(judge_obj, "engine", None), ledger)
    return judge_obj


def judge_work(judge_obj, index: int, shard: datasets.Dataset, *, schedule: str, ranking: str,
               tie_band: float) -> dict[str, datasets.Dataset]:
    """One shard on any executor (local or a Ray replica)."""
    return judge_shard(shard, judge_obj, schedule=schedule, ranking=ranking, tie_band=tie_band)


def close_judge(judge_obj) -> None:
    engine = getattr(judge_obj, "engine", None)
    if engine is not None and hasattr(engine, "close"):
        engine.close()
