"""The run report (a Jinja template) and the loop's terminal table and exit codes, from a loop.json."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from rlaif.errors import RunError
from rlaif.report import COLUMNS, exit_code, loop_table, write_report


def figure(value, lo, hi, n=20):
    return {"value": value, "ci95": [lo, hi], "n": n}


def iteration(k: int, greedy: float) -> dict:
    return {"iteration": k, "policy_in": f"iter-{k}", "times": {"generate": 1.0},
            "stages": {"generate": {"summary": {"candidates": 128}, "seconds": 2.0},
                       "judge": {"summary": {"position_consistency": 0.9, "first_position_rate": 0.5}},
                       "filter": {"summary": {"pairs": 30, "dropped.tie": 2, "dropped.low_margin": 5}}},
            "review": {"passed": True, "agreement": 0.8, "ci95": [0.7, 0.9], "simulated": True},
            "metrics": {"greedy_accuracy": figure(greedy, greedy - 0.1, greedy + 0.1),
                        "sampled_accuracy": figure(0.3, 0.2, 0.4), "win_rate": figure(0.55, 0.4, 0.7)}}


STATE = {"name": "x", "status": "stopped", "stop_reason": "<b>agreement</b> fell", "started_at": "now",
         "baseline": {"greedy_accuracy": figure(0.36, 0.3, 0.42), "sampled_accuracy": figure(0.27, 0.2, 0.33)},
         "judge_quality": {"greedy_accuracy": figure(0.86, 0.8, 0.9)},
         "iterations": [iteration(0, 0.41), iteration(1, 0.48)], "best_policy": "p", "best_iteration": 1,
         "final_model": "runs/x/iter-001/policy"}


def test_the_report_is_rendered_from_the_template_and_escapes_text(tmp_path):
    (tmp_path / "loop.json").write_text(json.dumps(STATE))
    html = write_report(tmp_path).read_text()
    assert html.count("<svg") == 2 and "judge model, greedy" in html
    assert "&lt;b&gt;agreement&lt;/b&gt; fell" in html and "<b>agreement</b>" not in html
    assert all(f"<th>{c.header}</th>" in html for c in COLUMNS)
    assert "0.480 [0.380, 0.580]" in html and "0.800 [0.700, 0.900] (simulated)" in html
    assert "<td>low_margin</td><td>5</td>" in html


def test_the_terminal_table_shows_the_start_and_each_iteration():
    console = Console(width=250, record=True)
    console.print(loop_table(STATE, "runs/x"))
    text = console.export_text()
    assert "start" in text and "0.360 [0.300, 0.420]" in text and "0.410 [0.310, 0.510]" in text
    assert "judge 1st-slot rate" not in text  # a report-only column
    assert "anchor agreement" not in text  # no anchor set: its columns are left out


def test_the_anchor_set_columns_show_when_the_loop_scored_one():
    anchored = [{**iteration(k, 0.4), "anchor": {"agreement": 0.75, "agreement_ci95": [0.6, 0.86],
                                                 "position_consistency": None, "first_position_rate": None}}
                for k in (0, 1)]
    console = Console(width=300, record=True)
    console.print(loop_table({**STATE, "iterations": anchored}, "runs/x"))
    text = console.export_text()
    assert "anchor agreement" in text and text.count("0.750 [0.600, 0.860]") == 2
    assert "anchor consistency" not in text  # a scoring judge has no order to swap: no value, no column


def test_exit_codes():
    assert exit_code({**STATE, "status": "complete"}) == 0
    assert exit_code({**STATE, "status": "waiting-for-review"}) == 3
    failed = {**STATE, "iterations": [{**iteration(0, 0.4), "review": {"passed": False}}]}
    assert exit_code(failed) == 4 and exit_code(STATE) == 0  # stopped early by patience, not by the gate
    flagged = {**STATE, "iterations": [{**iteration(0, 0.4), "review": None, "judge_gate": {"passed": False}}]}
    assert exit_code(flagged) == 4  # stopped on a flagged judge


def test_no_loop_yet(tmp_path):
    with pytest.raises(RunError, match="no loop.json"):
        write_report(tmp_path)
