"""The review store (SQLite, WAL), the stage over a run directory, simulated reviewers, the gate, the CLI."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3

import pytest

from conftest import run_cli
from rlaif.config import PipelineConfig
from rlaif.errors import InputError, RunError
from rlaif.review import check_gate
from rlaif.review.store import ReviewStore
from rlaif.stages.review import open_review, review_stats, simulate_review
from review_support import toy_pairs, write_pairs


def config(**review) -> PipelineConfig:
    return PipelineConfig.model_validate({"review": {"sample_size": 20, "min_reviewed": 10,
                                                     "checker": "rlaif.toy:accuracy_reward", **review}})


@pytest.fixture
def run(tmp_path):
    write_pairs(tmp_path / "run", toy_pairs(60, seed=1))
    return tmp_path / "run"


def test_verdicts_history_undo_and_resume(run):
    store = open_review(config(), str(run))
    assert (store.path.parent / "review.sqlite").exists()
    with sqlite3.connect(store.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rid = store.register("ann")
    first = store.next_item(rid)
    view = store.item_view(rid, first)
    assert "judge_side" not in view and view["choice"] is None  # hidden until answered
    out = store.record(rid, first, "A")
    assert out["label"] == ("rejected" if out["judge_side"] == "B" else "chosen")
    store.record(rid, first, "tie", note="both fine")  # a change keeps the history
    assert [h["choice"] for h in store.history(rid, first)] == ["A", "tie"]
    second = store.next_item(rid)
    assert second != first
    store.record(rid, second, "both-bad")
    assert store.undo(rid) == second  # undo retracts the latest standing verdict
    assert store.progress(rid) == (1, 20)
    # a fresh handle (the reviewer left and came back) continues at the first open item
    again = open_review(config(), str(run))
    assert again.next_item(again.register("ann")) == second
    assert [h["choice"] for h in again.history(rid, second)] == ["both-bad", None]
    assert again.item_view(rid, first)["choice"] == "tie"
    with pytest.raises(InputError, match="choice 'C'"):
        again.record(rid, first, "C")
    with pytest.raises(InputError, match="reviewer name"):
        again.register("<script>")


def test_sides_are_random_per_reviewer_and_undone_for_the_judge(run):
    store = open_review(config(), str(run))
    rid = store.register("ann")
    items = store.items()
    swapped = []
    for it in items:
        view = store.item_view(rid, it["item_id"])
        swapped.append(view["left"] == it["rejected"] and view["left"] != it["chosen"])
        pick_chosen = "B" if swapped[-1] else "A"
        assert store.record(rid, it["item_id"], pick_chosen)["label"] == "chosen"
    assert 0 < sum(swapped) < len(swapped)
    assert {v["label"] for v in store.current_verdicts()} == {"chosen"}


def _post_many(path, name, items):
    store = ReviewStore(path)
    rid = store.register(name)
    for i in items:
        store.record(rid, i, "A")


def test_concurrent_processes_lose_no_verdict(run):
    store = open_review(config(sample_size=30), str(run))
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_post_many, args=(store.path, f"r{k}", range(30))) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with sqlite3.connect(store.path) as con:
        assert con.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 120
        assert con.execute("SELECT COUNT(DISTINCT reviewer_id) FROM verdicts").fetchone()[0] == 4


def test_split_assignment_and_its_overlap(run):
    cfg = config(assignment="split", reviewers=["ann", "bob"], overlap=0.25)
    store = open_review(cfg, str(run))
    ann, bob = store.register("ann"), store.register("bob")
    assert store.progress(ann)[1] + store.progress(bob)[1] == 20 + 5
    with pytest.raises(InputError, match="not in review.reviewers"):
        store.register("cy")


def test_changed_sampling_settings_or_pairs_are_refused(run):
    open_review(config(), str(run))
    with pytest.raises(RunError, match="review.sample_size"):
        open_review(config(sample_size=30), str(run))
    open_review(config(min_agreement=0.9), str(run))  # gate settings may change
    write_pairs(run, toy_pairs(61, seed=1), overwrite=True)
    with pytest.raises(RunError, match="changed since this sample was drawn"):
        open_review(config(), str(run))


def test_gate_without_review_and_with_simulated_reviewers(run):
    gate = check_gate(run, 0, 0.7, 10)
    assert not gate.passed and "no review yet" in gate.message
    with pytest.raises(RunError, match="no review yet"):
        gate.require()
    cfg = config(noise=0.0, simulated_reviewers=2)
    written = simulate_review(cfg, str(run))
    assert written == {"sim-1": 20, "sim-2": 20}
    ok = check_gate(run, 0, 0.0, 10)
    assert ok.passed and ok.simulated and "SIMULATED" in ok.message and ok.reviewed == 20
    strict = check_gate(run, 0, 0.99, 10)
    assert not strict.passed and f"{strict.agreement:.3f}" in strict.message and "0.99" in strict.message
    too_few = check_gate(run, 0, 0.0, 50)
    assert not too_few.passed and "min_reviewed = 50" in too_few.message
    # with noise 0 both simulated reviewers answer alike, and exactly as the checker does
    manifest = review_stats(cfg, str(run))
    s = manifest.summary
    assert s["between_reviewers"]["sim-1 vs sim-2"]["raw_agreement"] == 1.0 and s["simulated"] is True
    store = ReviewStore(run / "iter-000" / "review" / "review.sqlite")
    from rlaif.toy import check
    for v in store.current_verdicts():
        item = next(i for i in store.items() if i["item_id"] == v["item_id"])
        c, r = check(item["chosen"], item["solution"]), check(item["rejected"], item["solution"])
        assert v["label"] == ("tie" if c and r else "both-bad" if not (c or r) else "chosen" if c else "rejected")


@pytest.mark.slow
def test_cli_simulate_stats_and_gate(run):
    res = run_cli("review", run, "--simulate", "--set", "review.checker=rlaif.toy:accuracy_reward",
                  "--set", "review.sample_size=20", "--set", "review.min_reviewed=5",
                  "--set", "review.min_agreement=0.0", "--gate")
    assert res.returncode == 0, res.stderr
    assert "review gate passed" in res.stdout and "SIMULATED" in res.stdout
    manifest = json.loads((run / "iter-000" / "review" / "manifest.json").read_text())
    assert manifest["stage"] == "review" and manifest["summary"]["simulated"] is True
    assert manifest["summary"]["items"] == 20 and "kappa_vs_judge" in manifest["summary"]["by_reviewer"]["sim-1"]
    from rlaif.runs import load_table
    statuses = load_table(run / "iter-000" / "review", "verdicts")
    assert len(statuses) == 20 and set(statuses["review_status"]) <= {"agreed", "disagreed", "tie", "both-bad"}
    res = run_cli("review", run, "--stats", "--set", "review.sample_size=20", "--set", "review.min_agreement=0.99",
                  "--gate")
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: review gate failed")
    assert "Traceback" not in res.stderr and "agreement below review.min_agreement = 0.99" in res.stderr
    # once a review exists, export refuses to go on when its gate fails, and goes on when it passes
    res = run_cli("export", run, "--set", "review.sample_size=20", "--set", "review.min_agreement=0.99")
    assert res.returncode == 2 and "review gate failed" in res.stderr and "Traceback" not in res.stderr
    assert not (run / "iter-000" / "export").exists()
    res = run_cli("export", run, "--set", "review.sample_size=20", "--set", "review.min_reviewed=5",
                  "--min-agreement", "0.0")
    assert res.returncode == 0, res.stderr
    assert (run / "iter-000" / "export" / "preference" / "dataset_dict.json").exists()
    res = run_cli("review", run.parent / "nope", "--stats")
    assert res.returncode == 2 and "run the filter stage first" in res.stderr
