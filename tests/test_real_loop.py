"""`pipelines/smollm2-ifeval.yaml` end to end on SmolLM2-135M-Instruct, at a tiny size (one iteration).

The shipped file runs through `rlaif run` with the transformers engine (vLLM's start-up would dominate
at this size), its prompted judge in place of the fine-tuned one (a 66-minute build), and sizes
overridden; the test checks the parts that could go wrong: the merged LoRA policy, the simulated review
answered by the verifiers, and the held-out evaluation per constraint type, with the unseen types apart,
in loop.json and the report. The first three tests check those pieces on their own, without a model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import datasets

from conftest import run_cli
from rlaif.report.figures import category_table
from rlaif.stages.evaluate import accuracy
from rlaif.tasks import verify, verify_prompted
from rlaif.tasks.ifeval import HELD_OUT_TYPES, rows


PIPELINE = Path(__file__).parent.parent / "pipelines" / "smollm2-ifeval.yaml"
HELD_OUT_PROMPTS = 12  # the first 12 test rows hold 12 categories, the three unseen types among them
# The file's judge (smollm2:135m-ifeval-rm) takes 66 minutes to build, so the smoke test judges with the
# prompted base model (its other judge, `judge.kind=pairwise`), whose plumbing has more parts: both orders,
# verdict tokens, the judge gate.
PROMPTED_JUDGE = ["judge.kind=pairwise", "judge.model=smollm2:135m-instruct"]
TINY = [*PROMPTED_JUDGE, "generate.engine=transformers", "judge.engine=transformers", "evaluate.engine=transformers",
        "generate.limit=3", "generate.n=2", "generate.max_new_tokens=8",
        "filter.drop_truncated=false", "filter.drop_inconsistent=false", "filter.min_margin=null",
        "filter.tie_band=0", "judge.tie_band=0",
        # the prompted 135M judge is position-biased, which the judge gate would stop on: this test is of the
        # plumbing, so every defence is off and the loop goes on to train on whatever the judge said
        "loop.stop_on_judge_flags=false",
        "train.max_steps=2", "train.batch_size=2", "train.max_length=128",
        f"evaluate.limit={HELD_OUT_PROMPTS}", "evaluate.max_new_tokens=8", "loop.iterations=1"]


def test_the_files_default_judge_is_the_fine_tuned_one_and_each_arm_is_one_override():
    from rlaif.config import load_config

    arm_a = load_config(PIPELINE)
    assert (arm_a.judge.kind, arm_a.judge.model) == ("reward-model", "smollm2:135m-ifeval-rm")
    assert not arm_a.loop.control
    arm_b = load_config(PIPELINE, ["judge.kind=verifier", "judge.verifier=rlaif.tasks:verify", "judge.model=null"])
    assert arm_b.judge.kind == "verifier" and arm_b.judge.model is None
    assert arm_b.evaluate == arm_a.evaluate and arm_b.generate == arm_a.generate  # the same data and held-out prompts
    arm_c = load_config(PIPELINE, ["loop.control=true"])
    assert arm_c.loop.control and arm_c.loop.control_train == {"learning_rate": arm_a.train.learning_rate,
                                                                 "epochs": arm_a.train.epochs}
    prompted = load_config(PIPELINE, PROMPTED_JUDGE)
    assert (prompted.judge.mode, prompted.judge.schedule, prompted.judge.engine) == ("logprobs", "pivot", "vllm")


ANSWERS = ["the sea is calm.", "THE SEA IS CALM.", "Indeed, it rains. P.S. bring a coat", "<<Snow>> It falls."]


def test_verify_prompted_finds_each_rows_constraint_from_its_prompt():
    test = rows("test")[:32]
    completions = [[{"role": "assistant", "content": ANSWERS[i % len(ANSWERS)]}] for i in range(len(test))]
    want = verify(completions, [r["constraint"] for r in test], [r["constraint_args"] for r in test])
    assert verify_prompted(completions, [r["messages"] for r in test]) == want
    assert 0 < sum(want) < len(want)  # the answers pass some rows and fail others
    assert verify_prompted(completions[:1], [[{"role": "user", "content": "not a task prompt"}]]) == [None]


def test_held_out_categories_are_pooled_apart_from_the_seen_ones():
    prompts = datasets.Dataset.from_list(rows("test")[:48])
    outs = [[ANSWERS[i % len(ANSWERS)]] for i in range(len(prompts))]
    rate = accuracy(verify, prompts, outs, "solution", held_out=list(HELD_OUT_TYPES))
    unseen = [c for c in prompts["category"] if c in HELD_OUT_TYPES]
    split = rate["by_split"]
    assert split["held-out categories"]["n"] == len(unseen) == 9
    assert split["seen categories"]["n"] == 48 - len(unseen)
    wins = split["held-out categories"]["value"] * len(unseen) + split["seen categories"]["value"] * (48 - len(unseen))
    assert wins == pytest.approx(rate["value"] * 48)
    assert "by_split" not in accuracy(verify, prompts, outs, "solution")


def test_category_table_has_a_column_per_policy_and_a_row_per_category():
    prompts = datasets.Dataset.from_list(rows("test")[:16])
    rate = lambda k: accuracy(verify, prompts, [[ANSWERS[(i + k) % 4]] for i in range(16)], "solution",  # noqa: E731
                              held_out=list(HELD_OUT_TYPES))
    state = {"baseline": {"greedy_accuracy": rate(0)},
             "iterations": [{"iteration": 0, "metrics": {"greedy_accuracy": rate(1)},
                             "control": {"greedy_accuracy": rate(2)}}]}
    headers, table = category_table(state)
    assert headers == ["category", "start", "after iter 0", "control, iter 0"]
    assert [r[0] for r in table[:3]] == ["all", "held-out categories", "seen categories"]
    assert sorted(r[0] for r in table[3:]) == sorted(set(prompts["category"]))
    assert all(len(r) == 4 and all(c.endswith(("n=1", "n=3", "n=13", "n=16")) for c in r[1:]) for r in table)
    assert category_table({"baseline": {}, "iterations": [{"iteration": 0, "metrics": {}}]}) == ([], [])


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


@pytest.mark.real_model
@pytest.mark.slow
def test_one_iteration_trains_a_merged_lora_policy(real_run):
    state = state_of(real_run)
    assert state["status"] == "complete"
    policy = real_run / "iter-000" / "policy"
    assert (policy / "model.safetensors").exists()  # merged weights, which vLLM loads as a plain checkpoint
    assert not (policy / "adapter_config.json").exists()
    assert state["iterations"][0]["train"]["steps"] == 2


@pytest.mark.real_model
@pytest.mark.slow
def test_the_review_is_answered_by_the_verifiers_and_labelled_simulated(real_run):
    it = state_of(real_run)["iterations"][0]
    kept = it["stages"]["filter"]["summary"]["pairs"]
    assert kept >= 1
    assert it["review"]["simulated"] is True
    assert it["review"]["reviewed"] == kept  # sample_fraction 1.0: every kept pair


@pytest.mark.real_model
@pytest.mark.slow
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


@pytest.mark.real_model
@pytest.mark.slow
def test_the_judge_is_the_base_model_so_its_rate_is_the_baseline(real_run):
    state = state_of(real_run)
    assert state["judge_quality"] == state["baseline"]


@pytest.mark.real_model
@pytest.mark.slow
def test_the_report_lists_every_constraint_type_per_iteration(real_run):
    html = (real_run / "report.html").read_text()
    assert "Greedy checked rate per category" in html
    for category in {r["category"] for r in rows("test")[:HELD_OUT_PROMPTS]} | {"held-out categories"}:
        assert f"<td>{category}</td>" in html
    assert "after iter 0" in html
