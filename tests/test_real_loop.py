"""`pipelines/smollm2-ifeval.yaml` end to end on SmolLM2-135M-Instruct, at a tiny size (one iteration).

The shipped file (arm A: the prompted pairwise judge) runs through `rlaif run` with the transformers
engine (vLLM's start-up would dominate at this size) and only sizes overridden; the test checks the
parts that could go wrong: the merged LoRA policy, the simulated review answered by the verifiers, and
the held-out evaluation per constraint type, with the unseen types apart, in loop.json and the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from rlaif.tasks.ifeval import HELD_OUT_TYPES, rows

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

PIPELINE = Path(__file__).parent.parent / "pipelines" / "smollm2-ifeval.yaml"
HELD_OUT_PROMPTS = 12  # the first 12 test rows hold 12 categories, the three unseen types among them
TINY = ["generate.engine=transformers", "judge.engine=transformers", "evaluate.engine=transformers",
        "generate.limit=3", "generate.n=2", "generate.max_new_tokens=8",
        "filter.drop_truncated=false", "filter.drop_inconsistent=false", "filter.min_margin=null",
        "filter.tie_band=0", "judge.tie_band=0",
        "train.max_steps=2", "train.batch_size=2", "train.max_length=128",
        f"evaluate.limit={HELD_OUT_PROMPTS}", "evaluate.max_new_tokens=8", "loop.iterations=1"]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, smollm2_path) -> Path:
    run = tmp_path_factory.mktemp("real-loop") / "run"
    sets = [a for s in TINY for a in ("--set", s)]
    result = run_cli("run", PIPELINE, "--out", run, "-q", *sets, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def state_of(run: Path) -> dict:
    return json.loads((run / "loop.json").read_text())


def check_rate(rate: dict, n: int) -> None:
    lo, hi = rate["ci95"]
    assert rate["n"] == n
    assert 0.0 <= lo <= rate["value"] <= hi <= 1.0
    assert hi - lo > 0.0  # a Wilson interval of a finite sample is never a point


def test_one_iteration_trains_a_merged_lora_policy(real_run):
    state = state_of(real_run)
    assert state["status"] == "complete"
    policy = real_run / "iter-000" / "policy"
    assert (policy / "model.safetensors").exists()  # merged weights, which vLLM loads as a plain checkpoint
    assert not (policy / "adapter_config.json").exists()
    assert state["iterations"][0]["train"]["steps"] == 2


def test_the_review_is_answered_by_the_verifiers_and_labelled_simulated(real_run):
    it = state_of(real_run)["iterations"][0]
    kept = it["stages"]["filter"]["summary"]["pairs"]
    assert kept >= 1
    assert it["review"]["simulated"] is True
    assert it["review"]["reviewed"] == kept  # sample_fraction 1.0: every kept pair


@pytest.mark.parametrize("which", ["baseline", "policy"])
def test_held_out_rate_per_constraint_type_with_intervals(real_run, which):
    state = state_of(real_run)
    metrics = state["baseline"] if which == "baseline" else state["iterations"][0]["metrics"]
    categories = [r["category"] for r in rows("test")[:HELD_OUT_PROMPTS]]
    for key in ("greedy_accuracy", "sampled_accuracy"):
        rate = metrics[key]
        check_rate(rate, HELD_OUT_PROMPTS)
        assert sorted(rate["by_category"]) == sorted(set(categories))
        for category, r in rate["by_category"].items():
            check_rate(r, categories.count(category))
        assert sum(r["value"] * r["n"] for r in rate["by_category"].values()) == pytest.approx(
            rate["value"] * rate["n"])
        unseen = sum(categories.count(t) for t in HELD_OUT_TYPES)
        check_rate(rate["by_split"]["held-out categories"], unseen)
        check_rate(rate["by_split"]["seen categories"], HELD_OUT_PROMPTS - unseen)


def test_the_judge_is_the_base_model_so_its_rate_is_the_baseline(real_run):
    state = state_of(real_run)
    assert state["judge_quality"] == state["baseline"]


def test_the_report_lists_every_constraint_type_per_iteration(real_run):
    html = (real_run / "report.html").read_text()
    assert "Greedy checked rate per category" in html
    for category in {r["category"] for r in rows("test")[:HELD_OUT_PROMPTS]} | {"held-out categories"}:
        assert f"<td>{category}</td>" in html
    assert "after iter 0" in html
