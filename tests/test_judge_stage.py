"""The judge stage over a run directory: tables per the contract, provenance, summary, resume, CLI."""

import json

import pytest

from rlaif.config import load_config
from rlaif.errors import RunError
from rlaif.runs import load_table, read_manifest, stage_dir
from rlaif.stages.generate import run_generate
from rlaif.stages.judge import run_judge
from tests.conftest import run_cli

SCORE_COLUMNS = {"prompt_id", "candidate_index", "prompt", "text", "num_tokens", "finish_reason", "failure",
                 "solution", "category", "score", "score_distribution", "strength", "rank", "judge_failure",
                 "raw_text", "judge_kind", "judge_model", "judge_engine", "template_name", "template_sha256"}
COMPARISON_COLUMNS = {"prompt_id", "candidate_a", "candidate_b", "p_a_first", "p_b_first", "preference", "consistent",
                      "tie", "raw_text_ab", "raw_text_ba", "judge_failure", "judge_kind", "judge_model", "judge_engine",
                      "template_name", "template_sha256"}


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, toy_test_prompts, policy_engine):
    """A generated run: 12 held-out toy prompts x 3 candidates."""
    run = tmp_path_factory.mktemp("judge") / "run"
    lines = toy_test_prompts.read_text().splitlines()[:12]
    prompts = run.parent / "prompts.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    cfg = load_config(None, None, {"generate.input": str(prompts), "generate.model": "toy:policy", "generate.n": 3,
                                   "generate.max_new_tokens": 6, "generate.shard_size": 6})
    run_generate(cfg, str(run), progress=False, engine=policy_engine)
    return run


def judge_cfg(**judge):
    return load_config(None, None, {f"judge.{k}": v for k, v in judge.items()})


def test_likelihood_stage_writes_scores_with_ranks_and_provenance(toy_run):
    manifest = run_judge(judge_cfg(kind="likelihood", model="toy:judge", shard_size=5), str(toy_run), progress=False)
    assert manifest.status == "complete" and manifest.num_shards == 3
    scores = load_table(stage_dir(toy_run, "judge"), "scores")
    assert set(scores.column_names) == SCORE_COLUMNS and len(scores) == 36
    assert not (stage_dir(toy_run, "judge") / "comparisons").exists()
    assert set(scores["judge_model"]) == {"toy:judge"} and set(scores["judge_kind"]) == {"likelihood"}
    assert all(s is not None and s < 0 for s in scores["score"])
    by_prompt = {}
    for r in scores:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    for rows in by_prompt.values():
        best = min(rows, key=lambda r: r["rank"])
        assert best["score"] == max(r["score"] for r in rows) and sorted(r["rank"] for r in rows) == [0, 1, 2]
    s = manifest.summary
    assert s["candidates"] == 36 and s["scored"] == 36 and s["judge_failures"] == 0 and s["judgments_per_s"] > 0
    # a rerun is a no-op; a changed judge refuses to mix
    before = (stage_dir(toy_run, "judge") / "manifest.json").read_text()
    run_judge(judge_cfg(kind="likelihood", model="toy:judge", shard_size=5, batch_size=7), str(toy_run), progress=False)
    assert (stage_dir(toy_run, "judge") / "manifest.json").read_text() == before
    with pytest.raises(RunError, match="judge.length_normalize: true → false"):
        run_judge(judge_cfg(kind="likelihood", model="toy:judge", shard_size=5, length_normalize=False), str(toy_run),
                  progress=False)


def test_pairwise_stage_writes_comparisons_and_flags_position_bias(toy_run):
    manifest = run_judge(judge_cfg(kind="pairwise", model="toy:biased-judge", template="toy-pairwise", shard_size=6),
                         str(toy_run), progress=False, overwrite=True)
    d = stage_dir(toy_run, "judge")
    comps = load_table(d, "comparisons")
    scores = load_table(d, "scores")
    assert set(comps.column_names) == COMPARISON_COLUMNS
    assert len(comps) == 12 * 3  # all pairs of 3 candidates, both orders in one row
    assert set(comps["template_name"]) == {"toy-pairwise"} and set(scores["judge_kind"]) == {"pairwise"}
    for r in comps:
        assert r["preference"] == pytest.approx((r["p_a_first"] + 1 - r["p_b_first"]) / 2)
    assert all(s == st for s, st in zip(scores["score"], scores["strength"]))
    s = manifest.summary
    assert s["comparisons"] == 36 and s["first_position_rate"] >= 0.95 and s["position_consistency"] <= 0.05
    assert s["parse_failures"] == 0 and s["judgments_per_s"] > 0
    assert json.loads((d / "manifest.json").read_text())["shards"]["00000"]["rows"] == {"comparisons": 18, "scores": 18}


def test_cli_verifier_judge_and_one_line_errors(toy_run):
    done = run_cli("judge", toy_run, "--judge", "verifier", "--verifier", "rlaif.toy:accuracy_reward", "--overwrite")
    assert done.returncode == 0, done.stderr
    assert "judgments_per_s" in done.stderr and "scored" in done.stderr
    scores = load_table(stage_dir(toy_run, "judge"), "scores")
    from rlaif import toy

    assert scores["score"] == [float(toy.check(t, s)) for t, s in zip(scores["text"], scores["solution"])]
    assert read_manifest(stage_dir(toy_run, "judge")).config["kind"] == "verifier"
    bad = run_cli("judge", toy_run, "--judge", "verifier", "--verifier", "rlaif.toy:nope", "--overwrite")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: field 'judge.verifier': module 'rlaif.toy' has no function 'nope'"
