"""`rlaif evaluate`: checked accuracy with Wilson intervals, reward-model accuracy, win rate; stored in the run."""

from __future__ import annotations

import json

import datasets
import pytest

from conftest import run_cli
from rlaif import toy
from rlaif.config import load_config
from rlaif.stages.evaluate import accuracy, proportion, wilson, win_rate
from rlaif.stats import paired_test
from test_train import FAST, write_exports

# the toy task's held-out prompts, checker and judge (the library names no toy defaults)
TOY_EVALUATE = ["evaluate.prompts=toy:test", "evaluate.checker=rlaif.toy:check", "evaluate.judge_model=toy:judge"]


def test_wilson_interval_known_values():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)  # never a zero-width interval at 0
    assert proportion(81, 100)["ci95"] == pytest.approx([0.7222, 0.8749], abs=1e-4)


def test_paired_test_counts_only_the_discordant_prompts():
    a = [1] * 10 + [0] * 30 + [1] * 60
    b = [0] * 10 + [0] * 30 + [1] * 60
    t = paired_test(a, b)
    assert (t["a_only"], t["b_only"], t["n"]) == (10, 0, 100) and t["difference"] == pytest.approx(0.1)
    assert t["p_value"] == pytest.approx(2 * 0.5 ** 10)  # all 10 discordant prompts favour a
    assert paired_test(b, a)["difference"] == pytest.approx(-0.1)
    assert paired_test(a, a)["p_value"] == 1.0 and paired_test(a, a)["a_only"] == 0
    # 6 vs 4 discordant: no evidence of a difference
    assert paired_test([1] * 6 + [0] * 4, [0] * 6 + [1] * 4)["p_value"] == pytest.approx(0.7539, abs=1e-4)
    with pytest.raises(ValueError, match="same prompts"):
        paired_test([1, 0], [1])
    with pytest.raises(ValueError, match="0 or 1"):
        paired_test([2, 0], [1, 0])


def test_accuracy_keeps_the_outcome_of_every_prompt_and_which_prompts():
    rows = toy.prompt_rows("test")[:3]
    prompts = datasets.Dataset.from_list(rows)
    sols = [r["solution"] for r in rows]
    out = accuracy(toy.check, prompts, [[sols[0], "x"], ["x"], [sols[2]]], "solution")
    assert out["passed_per_prompt"] == [1, 0, 1] and out["n"] == 4
    other = accuracy(toy.check, datasets.Dataset.from_list(toy.prompt_rows("test")[1:4]), [["x"]] * 3, "solution")
    assert other["prompts_digest"] != out["prompts_digest"]
    assert accuracy(toy.check, prompts, [["x"]] * 3, "solution")["prompts_digest"] == out["prompts_digest"]


def test_win_rate_counts_ties_and_uses_the_judge():
    from rlaif.judges.verifier import VerifierJudge

    rows = toy.prompt_rows("test")[:4]
    prompts = datasets.Dataset.from_list(rows)
    sols = [r["solution"] for r in rows]
    new = [sols[0], sols[1], "0", sols[3]]
    old = [sols[0], "0", sols[2], "1"]  # tie, new wins, old wins, new wins
    out = win_rate(VerifierJudge("rlaif.toy:accuracy_reward"), prompts, new, old)
    assert out["value"] == pytest.approx((0.5 + 1 + 0 + 1) / 4) and out["ties"] == 1 and out["n"] == 4


@pytest.mark.slow
def test_evaluate_run_stores_figures(tmp_path, toy_paths):
    from rlaif import generate
    from rlaif.engines.transformers import TransformersEngine
    from rlaif.stages.evaluate import run_evaluate
    from rlaif.stages.train import run_train

    run = tmp_path / "run"
    write_exports(run, n_train=64, n_test=48)
    cfg = load_config(None, FAST)
    run_train(cfg, run, method="sft", progress=False)
    run_train(cfg, run, method="rm", progress=False)
    cfg = load_config(None, FAST + TOY_EVALUATE + ["evaluate.limit=40", "evaluate.max_new_tokens=6", "evaluate.samples=2"])
    metrics = run_evaluate(cfg, run)
    stored = json.loads((run / "iter-000" / "evaluate" / "metrics.json").read_text())
    assert stored["greedy_accuracy"] == metrics["greedy_accuracy"]
    greedy, sampled = metrics["greedy_accuracy"], metrics["sampled_accuracy"]
    assert greedy["n"] == 40 and sampled["n"] == 80
    for fig in (greedy, sampled, metrics["win_rate"], metrics["reward_model_accuracy"]):
        lo, hi = fig["ci95"]
        assert 0 <= lo <= fig["value"] <= hi <= 1
    # the greedy figure is what the checker says about the policy's own greedy answers
    engine = TransformersEngine(str(run / "iter-000" / "policy"))
    rows = toy.prompt_rows("test")[:40]
    out = generate(datasets.Dataset.from_list(rows), engine, n=1, temperature=0, max_new_tokens=6)
    assert greedy["value"] == pytest.approx(sum(toy.check(t, s) for t, s in zip(out["text"], out["solution"])) / 40)
    assert metrics["previous"] == toy.resolve("toy:policy") and metrics["win_rate"]["judge"] == "likelihood"
    assert metrics["reward_model_accuracy"]["n"] == 48 and metrics["reward_model_accuracy"]["held_out"] is True

    cli = run_cli("evaluate", run, "--limit", "8", "--max-new-tokens", "6",
                  *[a for s in TOY_EVALUATE for a in ("--set", s)])
    assert cli.returncode == 0, cli.stderr
    assert "greedy_accuracy" in cli.stderr and "n=8" in cli.stderr and "reward_model_accuracy" in cli.stderr
