"""The filter stage on crafted judge tables: each filter drops exactly what it should and keeps the rest."""

from __future__ import annotations

import json

import datasets
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from rlaif.config import FilterConfig, PipelineConfig
from rlaif.errors import InputError, RunError
from rlaif.records import MESSAGES_FEATURE, PreferencePair
from rlaif.runs import StageWriter, read_manifest, stage_dir
from rlaif.stages.filter import filter_pairs, filter_shard, run_filter

SCORE_FEATURES = datasets.Features({
    "prompt_id": datasets.Value("string"), "candidate_index": datasets.Value("int32"), "prompt": MESSAGES_FEATURE,
    "text": datasets.Value("string"), "num_tokens": datasets.Value("int32"), "finish_reason": datasets.Value("string"),
    "failure": datasets.Value("string"), "solution": datasets.Value("string"), "category": datasets.Value("string"),
    "score": datasets.Value("float64"), "score_distribution": [datasets.Value("float64")],
    "strength": datasets.Value("float64"), "rank": datasets.Value("int32"), "judge_failure": datasets.Value("string"),
    "raw_text": datasets.Value("string"), "judge_kind": datasets.Value("string"), "judge_model": datasets.Value("string"),
    "judge_engine": datasets.Value("string"), "template_name": datasets.Value("string"),
    "template_sha256": datasets.Value("string"),
})
COMPARISON_FEATURES = datasets.Features({
    "prompt_id": datasets.Value("string"), "candidate_a": datasets.Value("int32"), "candidate_b": datasets.Value("int32"),
    "p_a_first": datasets.Value("float64"), "p_b_first": datasets.Value("float64"),
    "preference": datasets.Value("float64"), "consistent": datasets.Value("bool"), "tie": datasets.Value("bool"),
    "raw_text_ab": datasets.Value("string"), "raw_text_ba": datasets.Value("string"),
    "judge_failure": datasets.Value("string"), "judge_kind": datasets.Value("string"),
    "judge_model": datasets.Value("string"), "judge_engine": datasets.Value("string"),
    "template_name": datasets.Value("string"), "template_sha256": datasets.Value("string"),
})
PROV = {"judge_kind": "likelihood", "judge_model": "toy:judge", "judge_engine": "transformers",
        "template_name": None, "template_sha256": None}


def cand(pid: str, k: int, text: str, score: float | None, *, question: str | None = None, finish: str = "stop",
         failure: str | None = None, judge_failure: str | None = None, rank: int | None = None) -> dict:
    a, b = (int(x) for x in pid.split("-")[1:3]) if pid.startswith("add-") else (1, 1)
    return {"prompt_id": pid, "candidate_index": k,
            "prompt": [{"role": "user", "content": question or f"What is {a}+{b}?"}], "text": text,
            "num_tokens": len(text) + 1, "finish_reason": finish, "failure": failure, "solution": str(a + b),
            "category": "no-carry", "score": score, "score_distribution": None, "strength": None, "rank": rank,
            "judge_failure": judge_failure, "raw_text": None, **PROV}


def comp(pid: str, a: int, b: int, preference: float | None, consistent: bool = True,
         judge_failure: str | None = None) -> dict:
    return {"prompt_id": pid, "candidate_a": a, "candidate_b": b, "p_a_first": preference,
            "p_b_first": None if preference is None else 1 - preference, "preference": preference,
            "consistent": consistent, "tie": None if preference is None else abs(preference - .5) < .05,
            "raw_text_ab": None, "raw_text_ba": None, "judge_failure": judge_failure, **{**PROV, "judge_kind": "pairwise"}}


def scores_ds(rows: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_list(rows, features=SCORE_FEATURES)


def comps_ds(rows: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_list(rows, features=COMPARISON_FEATURES)


def write_judge(run, shards: list[tuple[list[dict], list[dict]]], iteration: int = 0) -> None:
    """A finished judge stage in `run/iter-K/judge/`, as the judge stage writes it (StageWriter + manifest)."""
    writer = StageWriter(stage_dir(run, "judge", iteration), stage="judge", config_hash="crafted", input_fingerprint="x",
                         config={}, num_shards=len(shards), shard_size=64)
    for i, (scores, comparisons) in enumerate(shards):
        tables = {"scores": scores_ds(scores)}
        if comparisons:
            tables["comparisons"] = comps_ds(comparisons)
        writer.write_shard(i, tables, 0.1, {"candidates": len(scores)})
    writer.finish({})


LONG = "a careful explanation that goes on and on with many words"
CRAFTED = [
    cand("add-1-2", 0, "3", 0.9), cand("add-1-2", 1, "4", 0.1),                                       # kept
    cand("add-2-2", 0, "4", 0.9), cand("add-2-2", 1, "", None, finish="error", failure="prompt too long"),
    cand("add-2-2", 2, "5", 0.2),
    cand("add-3-2", 0, "5", 0.9), cand("add-3-2", 1, "6", None, judge_failure="unparseable verdict"),
    cand("add-3-2", 2, "7", 0.1),
    cand("add-4-2", 0, "6", 0.9), cand("add-4-2", 1, "66666", 0.5, finish="length"), cand("add-4-2", 2, "8", 0.1),
    cand("add-5-2", 0, "7", 0.9), cand("add-5-2", 1, "  ", 0.5), cand("add-5-2", 2, "9", 0.1),
    cand("add-6-2", 0, "8", 0.9), cand("add-6-2", 1, "1212121212121212", 0.5), cand("add-6-2", 2, "1", 0.1),
    cand("add-7-2", 0, "9", 0.5), cand("add-7-2", 1, "10", 0.5),                                      # tie
    cand("add-8-2", 0, "10", 0.2), cand("add-8-2", 1, "11", 0.1),                                     # low quality
    cand("add-9-2", 0, "11", 0.9), cand("add-9-2", 1, " 11", 0.8), cand("add-9-2", 2, "12", 0.1),     # dup response
    cand("dup-a", 0, "3", 0.9, question="What is 1+2?"), cand("dup-a", 1, "5", 0.1, question="What is 1+2?"),
    cand("add-10-2", 0, "12", 0.55), cand("add-10-2", 1, "13", 0.5),                                  # low margin
    cand("add-11-2", 0, LONG, 0.95), cand("add-11-2", 1, "13", 0.8),                                  # length bias
    cand("add-12-2", 0, "14", 0.9), cand("add-12-2", 1, "15", 0.1),                                  # inconsistent
    cand("add-13-2", 0, "15", 0.9), cand("add-13-2", 1, "16", 0.1),                                  # pairwise, flipped
    cand("add-14-2", 0, "16", 0.6), cand("add-14-2", 1, "17", 0.4),                                  # failed comparison
]
COMPARISONS = [comp("add-12-2", 0, 1, 0.8, consistent=False), comp("add-13-2", 0, 1, 0.2),
               comp("add-14-2", 0, 1, None, judge_failure="engine error: timeout")]
SETTINGS = dict(min_best_score=0.3, min_margin=0.1, length_bias=True, length_bias_ratio=2.0, length_bias_max_margin=0.2)


def test_each_filter_drops_exactly_what_it_should():
    pairs, dropped = filter_pairs(scores_ds(CRAFTED), comps_ds(COMPARISONS), **SETTINGS)
    got = sorted((r["prompt_id"], r["level"], r["reason"], r["candidate_index"]) for r in dropped)
    assert got == sorted([
        ("add-2-2", "candidate", "generation_failure", 1),
        ("add-3-2", "candidate", "judge_failure", 1),
        ("add-4-2", "candidate", "truncated", 1),
        ("add-5-2", "candidate", "empty", 1),
        ("add-6-2", "candidate", "degenerate", 1),
        ("add-7-2", "pair", "tie", 0),
        ("add-8-2", "prompt", "low_quality", 0),
        ("add-9-2", "candidate", "duplicate_response", 1),
        ("dup-a", "prompt", "duplicate_prompt", None),
        ("add-10-2", "pair", "low_margin", 0),
        ("add-11-2", "pair", "length_bias", 0),
        ("add-12-2", "pair", "inconsistent", 0),
        ("add-14-2", "comparison", "judge_failure", 0),
    ])
    assert sorted(pairs["pair_id"]) == sorted([
        "add-1-2/0>1", "add-2-2/0>2", "add-3-2/0>2", "add-4-2/0>2", "add-5-2/0>2", "add-6-2/0>2", "add-9-2/0>2",
        "add-13-2/1>0", "add-14-2/0>1"])
    dup = dropped.filter(lambda r: r["reason"] == "duplicate_prompt")[0]
    assert "add-1-2" in dup["detail"] and "2 candidates" in dup["detail"]
    by_id = {r["pair_id"]: r for r in pairs}
    flipped = by_id["add-13-2/1>0"]  # the direct comparison (P(0 > 1) = .2) overrules the scores
    assert flipped["chosen"] == [{"role": "assistant", "content": "16"}] and flipped["margin"] == pytest.approx(0.6)
    assert flipped["preference"] == pytest.approx(0.8) and flipped["consistent"] is True
    fallback = by_id["add-14-2/0>1"]  # its comparison failed: the scores decide, and the failure is on record
    assert fallback["preference"] is None and fallback["margin"] == pytest.approx(0.2)
    ok = by_id["add-1-2/0>1"]
    assert ok["solution"] == "3" and ok["category"] == "no-carry" and ok["review_status"] == "unreviewed"
    assert ok["chosen_score"] == 0.9 and ok["rejected_score"] == 0.1 and ok["judge_model"] == "toy:judge"
    for row in pairs:  # every pair is a valid PreferencePair record
        PreferencePair.model_validate(row)


def test_filters_switched_off_keep_what_they_would_drop():
    off = dict(drop_failures=False, drop_truncated=False, drop_empty=False, drop_degenerate=False,
               drop_inconsistent=False, dedup_prompts=False, dedup_responses=False)
    rows = [r for r in CRAFTED if r["prompt_id"] in ("add-4-2", "add-6-2", "add-12-2", "dup-a", "add-1-2", "add-7-2")]
    pairs, dropped = filter_pairs(scores_ds(rows), comps_ds(COMPARISONS[:1]), **off)
    assert sorted(pairs["pair_id"]) == ["add-1-2/0>1", "add-12-2/0>1", "add-4-2/0>2", "add-6-2/0>2", "dup-a/0>1"]
    assert dropped["reason"] == ["tie"]  # ties never become pairs, whatever the switches


def test_strategies_build_the_right_pairs():
    rows = [cand("add-1-1", k, t, s) for k, (t, s) in enumerate([("2", .9), ("3", .6), ("4", .3), ("5", .1)])]
    ds = scores_ds(rows)
    assert filter_pairs(ds)[0]["pair_id"] == ["add-1-1/0>3"]
    pairs, dropped = filter_pairs(ds, strategy="all-above-margin", min_margin=0.25)
    assert sorted(pairs["pair_id"]) == ["add-1-1/0>1", "add-1-1/0>2", "add-1-1/0>3", "add-1-1/1>2", "add-1-1/1>3"]
    assert dropped["reason"] == ["low_margin"] and (dropped[0]["candidate_index"], dropped[0]["other_index"]) == (2, 3)
    top = filter_pairs(ds, strategy="top-k-vs-bottom-k", top_k=2)[0]
    assert sorted(top["pair_id"]) == ["add-1-1/0>2", "add-1-1/0>3", "add-1-1/1>2", "add-1-1/1>3"]
    rand = [filter_pairs(ds, strategy="best-vs-random", seed=s)[0]["pair_id"][0] for s in range(12)]
    assert all(p.startswith("add-1-1/0>") for p in rand) and len(set(rand)) > 1
    assert rand == [filter_pairs(ds, strategy="best-vs-random", seed=s)[0]["pair_id"][0] for s in range(12)]
    # a ranking from the judge (rank 0 = best) wins over raw scores when picking best and worst
    ranked = scores_ds([{**r, "rank": [3, 0, 1, 2][r["candidate_index"]]} for r in rows])
    assert filter_pairs(ranked, strategy="best-vs-worst")[0]["pair_id"] == ["add-1-1/0>1"]


def test_bad_tables_and_options_give_clear_errors():
    with pytest.raises(InputError, match=r"lacks column\(s\) \['score'\]"):
        filter_shard(scores_ds(CRAFTED[:2]).remove_columns("score"), None, FilterConfig())
    with pytest.raises(Exception, match="best-vs-worst"):
        filter_pairs(scores_ds(CRAFTED[:2]), strategy="best")


def test_run_filter_writes_the_layout_resumes_and_reports(tmp_path):
    run = tmp_path / "run"
    half = len(CRAFTED) // 2
    while CRAFTED[half]["prompt_id"] == CRAFTED[half - 1]["prompt_id"]:
        half += 1
    write_judge(run, [(CRAFTED[:half], []), (CRAFTED[half:], COMPARISONS)])
    cfg = PipelineConfig.model_validate({"filter": SETTINGS})
    manifest = run_filter(cfg, str(run), progress=False)
    out = stage_dir(run, "filter")
    assert sorted(p.name for p in (out / "pairs").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert (out / "dropped" / "part-00001.parquet").exists()
    s = manifest.summary
    assert s["pairs"] == 9 and s["candidates"] == len(CRAFTED) and s["dropped rows"] == 13
    assert s["dropped.duplicate_prompt"] == 1 and s["dropped.truncated"] == 1
    assert pq.read_table(out / "pairs" / "part-00000.parquet").column_names[:5] == \
        ["pair_id", "prompt_id", "prompt", "chosen", "rejected"]
    # the duplicate prompt sits in the second shard; its original in the first: dedup is global across shards
    assert "duplicate_prompt" in pq.read_table(out / "dropped" / "part-00001.parquet").column("reason").to_pylist()
    # resume: lose the second shard; the rerun rewrites it alone, with the index replayed from the first
    m = read_manifest(out)
    del m.shards["00001"]
    m.status = "running"
    (out / "manifest.json").write_text(m.model_dump_json())
    (out / "pairs" / "part-00001.parquet").unlink()
    again = run_filter(cfg, str(run), progress=False)
    assert again.summary == s
    with pytest.raises(RunError, match=r"filter\.min_margin: .* → 0\.3"):
        run_filter(PipelineConfig.model_validate({"filter": {**SETTINGS, "min_margin": 0.3}}), str(run), progress=False)


def test_cli_filter_prints_the_drop_table(tmp_path):
    run = tmp_path / "run"
    write_judge(run, [(CRAFTED, COMPARISONS)])
    r = run_cli("filter", run, "--set", "filter.min_best_score=0.3", "--min-margin", "0.1")
    assert r.returncode == 0, r.stderr
    assert "dropped.duplicate_prompt" in r.stderr and "margin mean" in r.stderr and "pairs" in r.stderr
    summary = json.loads((stage_dir(run, "filter") / "manifest.json").read_text())["summary"]
    assert summary["dropped.low_margin"] == 1 and summary["dropped.low_quality"] == 1
    bad = run_cli("filter", run, "--strategy", "best")
    assert bad.returncode == 2 and "filter.strategy" in bad.stderr and "best-vs-worst" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = run_cli("filter", tmp_path / "nothing")
    assert missing.returncode == 2 and "rlaif judge" in missing.stderr
