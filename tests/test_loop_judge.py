"""The loop watches its judge: it stops on a flagged judge, and scores a fixed anchor set every iteration."""

import json
import os

import pytest

from conftest import REPO, run_cli
from test_loop import _sets, _state

DEMO = REPO / "pipelines" / "demo.yaml"
BIASED = ("judge.kind=pairwise", "judge.model=toy:biased-judge", "judge.template=toy-pairwise",
          "loop.iterations=2", "loop.control=false", "review.min_agreement=0")


def test_a_position_biased_judge_stops_the_loop_before_training(tmp_path, toy_paths):
    run = tmp_path / "biased"
    result = run_cli("run", DEMO, "--out", run, "-q", *_sets(*BIASED), timeout=600)
    assert result.returncode == 4, result.stderr[-2000:]
    state = _state(run)
    it = state["iterations"][0]
    first = it["stages"]["judge"]["summary"]["first_position_rate"]
    assert state["status"] == "stopped" and len(state["iterations"]) == 1 and first >= 0.9
    assert it["judge_gate"]["passed"] is False and "review" not in it
    reason = state["stop_reason"]
    assert reason.startswith(f"judge gate failed for {run} iter-000: the pairwise judge toy:biased-judge")
    assert f"first-position rate {first:.3f} >= 0.9" in reason and "loop.stop_on_judge_flags: false" in reason
    assert reason in result.stderr and "judge gate failed" in (run / "report.html").read_text()
    assert not (run / "iter-000" / "export").exists() and not (run / "iter-000" / "policy").exists()


def test_with_the_option_off_a_flagged_judge_does_not_stop_the_loop(tmp_path, toy_paths):
    """The loop goes on to the review, whose gate then fails for its own reason: the judge tied every pair."""
    run = tmp_path / "unchecked"
    result = run_cli("run", DEMO, "--out", run, "-q", *_sets(*BIASED, "loop.stop_on_judge_flags=false"), timeout=600)
    state = _state(run)
    it = state["iterations"][0]
    assert it["stages"]["judge"]["summary"]["first_position_rate"] >= 0.9 and "judge_gate" not in it
    assert it["review"]["passed"] is False and "the filter kept no pairs to review" in it["review"]["message"]
    assert state["stop_reason"].startswith("review gate failed") and "judge gate failed" not in result.stderr
    assert result.returncode == 4 and it["stages"]["filter"]["summary"]["dropped.tie"] > 0


@pytest.mark.slow
def test_the_anchor_set_is_scored_every_iteration_as_judge_eval_scores_it(tmp_path, toy_paths):
    source, anchor = tmp_path / "source", tmp_path / "anchor.jsonl"
    made = run_cli("generate", "--out", source, "-c", DEMO, "--set", "generate.limit=24", "-q", timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]
    wrote = run_cli("judge-eval", source, "-c", DEMO, "--checker", "rlaif.toy:accuracy_reward", "--write-pairs", anchor,
                    "--max-pairs", 40, timeout=600)
    assert wrote.returncode == 0, wrote.stderr[-2000:]
    n = len(anchor.read_text().splitlines())
    assert n >= 10

    run = tmp_path / "anchored"
    result = run_cli("run", DEMO, "--out", run, "-q",
                     *_sets("loop.iterations=2", "loop.control=false", f"loop.anchor_pairs={anchor}"), timeout=900,
                     env={**os.environ, "COLUMNS": "400"})  # the terminal table unwrapped
    assert result.returncode == 0, result.stderr[-2000:]
    state = _state(run)
    assert len(state["iterations"]) == 2
    out = tmp_path / "eval"
    alone = run_cli("judge-eval", "--pairs", anchor, "-c", DEMO, "--no-injection", "--out", out, timeout=600)
    assert alone.returncode == 0, alone.stderr[-2000:]
    expected = json.loads((out / "metrics.json").read_text())
    for it in state["iterations"]:  # the judge (toy:judge) is the same every iteration: so are its figures
        a = it["anchor"]
        assert a["pairs"] == n and a["file"] == str(anchor) and it["metrics"]["greedy_accuracy"]["n"] == 20
        for key in ("agreement", "agreement_ci95", "position_consistency", "first_position_rate"):
            assert a[key] == expected.get(key), key
        lo, hi = a["agreement_ci95"]
        assert lo <= a["agreement"] <= hi and a["agreement"] > 0.5  # a likelihood judge of the task reads it right
        assert (run / f"iter-{it['iteration']:03d}" / "anchor" / "metrics.json").exists()
    cell = f"{expected['agreement']:.3f} [{expected['agreement_ci95'][0]:.3f}, {expected['agreement_ci95'][1]:.3f}]"
    shown = result.stdout + result.stderr
    assert cell in shown and "anchor agreement" in shown  # the terminal table
    html = (run / "report.html").read_text()
    assert html.count(cell) == 2 and "anchor 1st-slot rate" in html


def test_a_bad_anchor_file_is_a_one_line_error_before_any_stage(tmp_path):
    bad = tmp_path / "anchor.jsonl"
    bad.write_text('{"prompt": "1+1=", "chosen": "2"}\n')
    run = tmp_path / "never"
    result = run_cli("run", DEMO, "--out", run, "-q", "--set", f"loop.anchor_pairs={bad}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert str(bad) in result.stderr and "rejected" in result.stderr and not (run / "iter-000").exists()
