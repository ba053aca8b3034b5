"""The judge stage: candidates in, `scores` (one row per candidate) and `comparisons` out.

`judge_shard` is the pure step (a Dataset of candidates -> the two tables); `judge` is the Python
API; `run_judge` runs the stage over a run directory in resumable shards of whole prompts. The
tables follow the contract at the end of `rlaif/records.py`.
"""

from __future__ import annotations

import logging
import math
from functools import partial

import datasets
import numpy as np

from rlaif.config import JudgeConfig, PipelineConfig, config_hash
from rlaif.engines.ledger import CallLedger, attach_ledger, usage_summary
from rlaif.errors import RunError
from rlaif.judges import CandidateItem, build_judge
from rlaif.judges.ranking import rank_groups
from rlaif.progress import StageProgress
from rlaif.records import CANDIDATE_FEATURES, StageManifest
from rlaif.runs import StageWriter, fingerprint_files, load_table, read_manifest, shard_name, stage_dir
from rlaif.scale import map_shards

log = logging.getLogger(__name__)

THROUGHPUT_ONLY = {"batch_size", "max_concurrency", "timeout_s", "max_retries", "api_key_env", "shard_size"}
CARRIED = ["prompt_id", "candidate_index", "prompt", "text", "num_tokens", "finish_reason", "failure"]
PROVENANCE_FEATURES = {k: datasets.Value("string") for k in
                       ("judge_kind", "judge_model", "judge_engine", "template_name", "template_sha256")}
JUDGE_SCORE_FEATURES = {
    "score": datasets.Value("float64"),
    "score_distribution": [datasets.Value("float64")],
    "strength": datasets.Value("float64"),
    "rank": datasets.Value("int32"),
    "judge_failure": datasets.Value("string"),
    "raw_text": datasets.Value("string"),
    **PROVENANCE_FEATURES,
}
COMPARISON_FEATURES = datasets.Features({
    "prompt_id": datasets.Value("string"),
    "candidate_a": datasets.Value("int32"),
    "candidate_b": datasets.Value("int32"),
    "p_a_first": datasets.Value("float64"),
    "p_b_first": datasets.Value("float64"),
    "preference": datasets.Value("float64"),
    "consistent": datasets.Value("bool"),
    "tie": datasets.Value("bool"),
    "raw_text_ab": datasets.Value("string"),
    "raw_text_ba": datasets.Value("string"),
    "judge_failure": datasets.Value("string"),
    **PROVENANCE_FEATURES,
})


def judge_shard(candidates: datasets.Dataset, judge, *, schedule: str = "all-pairs", ranking: str = "bradley-terry",
                tie_band: float = 0.05) -> dict[str, datasets.Dataset]:
    """Judge one shard of candidates: {"scores": ..., "comparisons": ...} (comparisons for pairwise judges)."""
    rows = candidates.to_list()
    extras = [c for c in candidates.column_names if c not in CANDIDATE_FEATURES]
    judged = [k for k, r in enumerate(rows) if r["failure"] is None]
    scores: list[tuple] = [(None, None, None, None, None, "not judged: generation failed", None)] * len(rows)
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
                scores[where[(pid, index)]] = (strength, None, strength, rank, None, None, None)
        comps = [j.model_dump() for j in judgments]
        tables["comparisons"] = datasets.Dataset.from_dict(
            {c: [row[c] for row in comps] for c in COMPARISON_FEATURES}, features=COMPARISON_FEATURES)
    else:
        items = [CandidateItem(rows[k]["prompt"], rows[k]["text"], {c: rows[k][c] for c in extras}) for k in judged]
        for k, s in zip(judged, judge.score(items) if items else []):
            scores[k] = (s.score, s.distribution, None, None, s.failure, s.raw_text, None)
        _rank_by_score(rows, scores)
    prov = judge.provenance.columns()
    out = {c: [r[c] for r in rows] for c in CARRIED + extras}
    for n, name in enumerate(["score", "score_distribution", "strength", "rank", "judge_failure", "raw_text"]):
        out[name] = [s[n] for s in scores]
    for name, value in prov.items():
        out[name] = [value] * len(rows)
    features = datasets.Features({**{c: CANDIDATE_FEATURES[c] for c in CARRIED},
                                  **{c: candidates.features[c] for c in extras}, **JUDGE_SCORE_FEATURES})
    tables["scores"] = datasets.Dataset.from_dict(out, features=features)
    return tables


def _rank_by_score(rows: list[dict], scores: list[tuple]) -> None:
    """Scoring judges: rank each prompt's scored candidates by score (0 = best); strength stays null."""
    by_prompt: dict[str, list[int]] = {}
    for k, r in enumerate(rows):
        if scores[k][0] is not None:
            by_prompt.setdefault(r["prompt_id"], []).append(k)
    for ks in by_prompt.values():
        for rank, k in enumerate(sorted(ks, key=lambda k: (-scores[k][0], rows[k]["candidate_index"]))):
            s = scores[k]
            scores[k] = (s[0], s[1], s[2], rank, s[4], s[5], s[6])


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
              engine=None) -> StageManifest:
    """Run the judge stage into `run/iter-K/judge/`, resuming finished shards."""
    j = cfg.judge
    source = stage_dir(run, "generate", iteration)
    gen = read_manifest(source)
    if gen is None or gen.status != "complete":
        raise RunError(f"{source}: the generate stage is not complete; run `rlaif generate` first")
    candidates = load_table(source, "candidates")
    files = [source / "candidates" / shard_name(i) for i in sorted(gen.finished())]
    template_sha = None
    if j.kind == "verifier":  # a bad module:function fails here, before the run directory is touched
        from rlaif.judges.verifier import load_function

        load_function(j.verifier)
    if j.kind in ("pairwise", "pointwise"):
        from rlaif.judges.prompting import judge_template

        template_sha = judge_template(j.template or ("pairwise" if j.kind == "pairwise" else "additive")).sha256
    bounds = prompt_bounds(candidates["prompt_id"])
    num_shards = max(1, math.ceil(len(bounds) / j.shard_size))
    writer = StageWriter(
        stage_dir(run, "judge", iteration), stage="judge",
        config_hash=config_hash(j, cfg.seed, template_sha, exclude=THROUGHPUT_ONLY),
        input_fingerprint=fingerprint_files(files),
        config={**j.model_dump(mode="json", exclude=THROUGHPUT_ONLY), "seed": cfg.seed, "template_sha256": template_sha},
        num_shards=num_shards, shard_size=j.shard_size, overwrite=overwrite)
    todo = [i for i in range(num_shards) if i not in writer.done]
    if not todo and writer.complete:
        log.info("judge: all %d shards already done in %s", num_shards, writer.dir)
        return writer.manifest

    def shard_input(i: int) -> datasets.Dataset:
        chunk = bounds[i * j.shard_size:(i + 1) * j.shard_size]
        return candidates.select(range(chunk[0][0], chunk[-1][1])) if chunk else candidates.select([])

    # the executor (rlaif.scale) runs judge_shard locally or on Ray replicas; this driver writes every shard
    borrowed = build_judge(j, engine, cfg.seed) if engine is not None and todo and cfg.executor == "local" else None
    ledger = CallLedger.for_run(run, "judge", iteration, fresh=overwrite) if engine is None and \
        j.engine == "openai" and j.kind in ("pairwise", "pointwise", "likelihood") else None
    shards = map_shards(cfg.executor, todo, shard_input, ray_config=cfg.ray, state=borrowed,
                        work=partial(judge_work, schedule=j.schedule, ranking=j.ranking, tie_band=j.tie_band),
                        setup=partial(judge_replica, j, cfg.seed, ledger), teardown=close_judge)
    done_rows = len(candidates) - sum(_shard_rows(bounds, i, j.shard_size) for i in todo)
    with StageProgress("judge", total=len(candidates), done=done_rows, unit="candidates", enabled=progress) as bar:
        for i, tables, seconds in shards:
            writer.write_shard(i, tables, seconds, shard_counts(tables))
            bar.advance(len(tables["scores"]))
    seconds = sum(s.seconds for s in writer.manifest.shards.values())
    summary = summarise(writer.dir, j.kind, seconds)
    if ledger is not None:
        summary.update(usage_summary(ledger, "judge", iteration, cfg.pricing))
    return writer.finish(summary)


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


def _shard_rows(bounds, i: int, size: int) -> int:
    chunk = bounds[i * size:(i + 1) * size]
    return chunk[-1][1] - chunk[0][0] if chunk else 0
