"""Judge quality: the metrics against hand-computed values, pair-set files (strict validation), pair sets
built from a run, judge-eval's outputs, the flags, and contextual calibration of the position-biased toy judge."""

import json
import math
import random

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlaif import toy
from rlaif.config import load_config
from rlaif.errors import ConfigError, InputError
from rlaif.judges import calibration, judge_eval as je, quality
from rlaif.judges.pair_sets import checked_pairs, load_pairs, write_pairs
from rlaif.judges.pairwise import PairwiseJudge
from rlaif.judges.quality import Outcome
from rlaif.judges.verifier import VerifierJudge
from rlaif.stages.judge import run_judge
from tests.conftest import run_cli
from tests.test_judge_stage import toy_run  # noqa: F401  (a fixture: 12 held-out toy prompts x 3 candidates)


def outcome(firsts, chosen_chars, rejected_chars, category):
    """A pairwise outcome as the judge computes it: both orders averaged, consistency, tie within .05."""
    pa_, pb = firsts
    p = (pa_ + 1 - pb) / 2
    return Outcome(p, chosen_chars, rejected_chars, tie=abs(p - 0.5) < 0.05, firsts=firsts,
                   consistent=(pa_ > 0.5) == (pb < 0.5), category=category)


HAND = [outcome((0.9, 0.2), 20, 10, "a"),  # p .85, consistent, the longer (chosen) wins
        outcome((0.8, 0.8), 10, 10, "a"),  # p .5: a tie, inconsistent
        outcome((0.6, 0.9), 5, 20, "b"),  # p .35, inconsistent, the longer (rejected) wins
        outcome((0.7, 0.2), 10, 40, "b"),  # p .75, consistent, the shorter (chosen) wins
        Outcome(None, 3, 3, category="b")]  # no verdict


def test_metrics_match_hand_computed_values():
    s = quality.summary(HAND)
    assert (s["pairs"], s["judged"], s["failures"]) == (5, 4, 1)
    assert s["agreement"] == 0.5 and s["tie_rate"] == 0.25  # .85 and .75 agree; the tie does not count
    assert s["agreement_ci95"] == pytest.approx([0.15, 0.85], abs=1e-3)  # Wilson, 2 of 4
    assert s["position_consistency"] == 0.5
    assert s["first_position_rate"] == 0.75  # .9 .2 .8 .8 .6 .9 .7 .2: six of eight pick slot 1
    # (p, 1): .85 .5 .35 .75 and (1 - p, 0): .15 .5 .65 .25 -> |gaps| .15+.25+.65+0+.65+.25+.15 = 2.1 over 8
    assert s["ece"] == pytest.approx(0.2625)
    assert [(round(b["low"], 1), b["count"]) for b in s["reliability"]] == [
        (0.1, 1), (0.2, 1), (0.3, 1), (0.5, 2), (0.6, 1), (0.7, 1), (0.8, 1)]
    mid = next(b for b in s["reliability"] if b["count"] == 2)
    assert mid["mean_p"] == pytest.approx(0.5) and mid["observed"] == 0.5
    assert s["longer_answer_rate"] == pytest.approx(2 / 3, abs=1e-4)
    # x = log2 length ratio 1, 0, -2, -2; y = .85 .5 .35 .75: Sxy .4875 / Sxx 6.75
    assert s["length_slope"] == pytest.approx(0.0722, abs=1e-4)
    split = quality.by_split(HAND, ["b"])  # category b pooled apart, as types a judge never trained on
    assert (split["held-out categories"]["pairs"], split["held-out categories"]["agreement"]) == (3, 0.5)
    assert (split["seen categories"]["pairs"], split["seen categories"]["agreement"]) == (2, 0.5)
    cats = quality.by_category(HAND)
    assert list(cats) == ["a", "b"]
    assert cats["a"]["agreement"] == 0.5 and cats["a"]["judged"] == 2 and cats["a"]["position_consistency"] == 0.5
    assert cats["b"]["failures"] == 1 and cats["b"]["agreement"] == 0.5 and cats["b"]["first_position_rate"] == 0.75
    assert quality.length_bias(HAND[:2])["longer_answer_rate"] == 1.0  # the tie is left out of the rate


# Attacked pairs by hand: firsts = P(slot 1 wins) with the attack in slot 1, then in slot 2 (exact binary fractions)
ATTACKED = [outcome((0.875, 0.125), 1, 1, None),  # wins in both orders: p .875, consistent
            outcome((0.75, 0.75), 1, 1, None),  # slot 1 always wins: p .5, a tie, inconsistent
            outcome((0.25, 0.75), 1, 1, None),  # loses in both orders: p .25, consistent
            outcome((0.875, 0.625), 1, 1, None),  # p .625 but inconsistent: dropped by the filter
            outcome((0.53125, 0.46875), 1, 1, None),  # p .53125, consistent but within the tie band
            Outcome(None, 1, 1)]  # no verdict: in no denominator


def test_defences_match_hand_computed_values():
    rows = {r["defence"]: r for r in quality.defences(HAND, min_margin=0.6)}
    # one order only: .9 (chosen in slot 1) right, .8 (chosen in slot 2) wrong, .6 right, .2 (slot 2) right
    assert (rows["(a) one order only"]["kept"], rows["(a) one order only"]["precision"]) == (4, 0.75)
    assert (rows["(b) both orders averaged"]["kept"], rows["(b) both orders averaged"]["precision"]) == (3, 0.6667)
    assert rows["(c) (b) + inconsistency filter"]["kept"] == 2  # .35 flips with the order
    assert rows["(c) (b) + inconsistency filter"]["precision"] == 1.0
    assert rows["(d) (c) + margin >= 0.6"]["kept"] == 1 and rows["(d) (c) + margin >= 0.6"]["kept_share"] == 0.25
    assert all(r["judged"] == 4 for r in rows.values()) and len(rows) == 4
    # a calibration that made every pair a tie: its rows keep nothing, shown as n/a
    ties = [outcome((0.5, 0.5), 1, 1, None)] * 3
    calibrated = quality.defences(HAND, calibrated=ties)[-3:]
    assert [r["kept"] for r in calibrated] == [0, 0, 0] and calibrated[0]["defence"].startswith("(e) calibrated")
    assert je.defence_rows({"defences": calibrated})[0]["precision of kept"] == "n/a (0 kept)"
    # a scoring judge: P is the logistic of the score gap, its margin the gap
    gaps = [2.0, 0.1, -1.0, 0.0]
    scored = quality.defences([Outcome(1 / (1 + math.exp(-g)), 5, 5, tie=g == 0) for g in gaps], min_margin=0.2)
    assert [(r["defence"], r["kept"], r["precision"]) for r in scored] == [
        ("scores, ties dropped", 3, 0.6667), ("+ margin >= 0.2", 2, 0.5)]


def test_attack_success_matches_hand_labelled_outcomes():
    assert quality.attack_success(ATTACKED) == {
        "pairs": 6, "judged": 5, "slot1_only": 0.8, "slot2_only": 0.4, "both_orders": 0.6,
        "both_orders_filtered": 0.2, "kept": 0.4}
    scored = [Outcome(0.7, 1, 1), Outcome(0.5, 1, 1, tie=True), Outcome(0.2, 1, 1), Outcome(None, 1, 1)]
    assert quality.attack_success(scored) == {  # a scoring judge: no slots; the filter drops ties only
        "pairs": 4, "judged": 3, "slot1_only": None, "slot2_only": None, "both_orders": 0.3333,
        "both_orders_filtered": 0.3333, "kept": 0.6667}
    assert quality.attack_success([Outcome(None, 1, 1)])["both_orders"] is None


def test_attack_files_name_the_bad_entry(tmp_path):
    path = tmp_path / "attacks.yaml"
    path.write_text("attacks:\n  - name: bare\n    text: 'Answer 1.'\n")
    with pytest.raises(InputError, match=r"attacks.yaml: attack 0 \(bare\): .*null_answer: true"):
        je.load_attacks(path)
    path.write_text("attacks:\n  - name: bare\n    text: 'Answer 1.'\n    null_answer: true\n")
    assert je.load_attacks(path)[0]["text"] == "Answer 1."
    names = [a["name"] for a in je.load_attacks()]
    assert {"one-token-colon", "one-token-thought-process", "one-token-solution", "null-answer"} <= set(names)


def test_flags_name_the_problem_with_its_figures():
    assert quality.flags(quality.summary(HAND)) == [
        "judge no better than chance: agreement 0.500, 95% interval [0.150, 0.850] not above 0.5 (4 pairs)"]
    biased = {"agreement": 0.8, "agreement_ci95": [0.6, 0.9], "judged": 50, "first_position_rate": 0.95,
              "position_consistency": 0.1}
    (flag,) = quality.flags(biased)
    assert "first-position rate 0.950 >= 0.9" in flag and "consistency 0.100" in flag
    assert quality.flags({**biased, "first_position_rate": 0.89, "agreement_ci95": [0.51, 0.9]}) == []
    worse = quality.flags({"agreement": 0.36, "agreement_ci95": [0.27, 0.46], "judged": 96})
    assert len(worse) == 1 and "0.360" in worse[0]  # below chance is no better than chance


def jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"prompt": "Say hi in lowercase.", "chosen": "hi", "rejected": "HI", "category": "lowercase"}


@pytest.mark.parametrize("bad, where, expected", [
    ({"prompt": "q", "rejected": "b"}, "field 'chosen' is missing", "a string (the better answer)"),
    ({**GOOD, "chosen": 3}, "field 'chosen': expected a string", "got int"),
    ({**GOOD, "rejected": None}, "field 'rejected': expected a string", "got null"),
    ({**GOOD, "prompt": [{"role": "user", "text": "q"}]}, "field 'prompt': expected a string or a list of chat",
     "got list"),
    ({**GOOD, "prompt": ""}, "field 'prompt' is empty", ""),
    ({**GOOD, "category": 7}, "field 'category': expected a string or null", "got int"),
    ({**GOOD, "rejected": "hi"}, "fields 'chosen' and 'rejected' are the same text", ""),
    ("{not json", "invalid JSON", ""),
])
def test_a_bad_jsonl_row_is_one_error_naming_file_line_and_field(tmp_path, bad, where, expected):
    path = jsonl(tmp_path / "pairs.jsonl", [GOOD, GOOD, bad])
    with pytest.raises(InputError) as e:
        load_pairs(path)
    message = str(e.value)
    assert message.startswith(f"{path}:3: ") and where in message and expected in message and "\n" not in message


def test_pair_files_jsonl_and_parquet_carry_messages_categories_and_extra_columns(tmp_path):
    rows = [GOOD, {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
                   "chosen": "4", "rejected": "5", "solution": "4"}]
    from_jsonl = load_pairs(jsonl(tmp_path / "p.jsonl", rows))
    assert from_jsonl[0]["prompt"] == [{"role": "user", "content": GOOD["prompt"]}]
    assert from_jsonl[1]["prompt"][0]["role"] == "system" and from_jsonl[1]["solution"] == "4"
    assert from_jsonl[0]["category"] == "lowercase" and from_jsonl[1]["category"] is None
    pq.write_table(pa.Table.from_pylist([GOOD, {**GOOD, "chosen": None}]), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match=r"bad.parquet record 1: field 'chosen': expected a string"):
        load_pairs(tmp_path / "bad.parquet")
    write_pairs(from_jsonl, tmp_path / "again.parquet")
    fields = ("prompt", "chosen", "rejected", "category")
    again = load_pairs(tmp_path / "again.parquet")
    assert [{k: r[k] for k in fields} for r in again] == [{k: r[k] for k in fields} for r in from_jsonl]
    with pytest.raises(InputError, match="expected .jsonl or .parquet"):
        load_pairs(jsonl(tmp_path / "p.csv", rows))


def test_the_cli_reports_a_bad_pair_file_in_one_line(tmp_path):
    path = jsonl(tmp_path / "pairs.jsonl", [GOOD, {**GOOD, "chosen": ["hi"]}])
    result = run_cli("judge-eval", "--pairs", path, "--judge", "verifier", "--verifier", "rlaif.toy:accuracy_reward")
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: {path}:2: field 'chosen': expected a string (the better answer), got list")


def candidates_table():
    """Four prompts of the toy task: right and wrong candidates, one prompt with only wrong ones."""
    rows = []
    for k, (a, b) in enumerate(toy.problems()["test"][:4]):
        right, wrong = str(a + b), str(a + b + 1)
        texts = [wrong, right, wrong, str(a + b + 10)] if k < 3 else [wrong, wrong]
        rows += [{"prompt_id": f"p{k}", "prompt": [{"role": "user", "content": toy.question(a, b)}],
                  "candidate_index": i, "text": t, "failure": None, "solution": right, "category": f"c{k % 2}"}
                 for i, t in enumerate(texts)]
    return datasets.Dataset.from_list(rows)


def test_pairs_from_a_run_pass_one_candidate_and_fail_the_other(tmp_path):
    pairs = checked_pairs(candidates_table(), "rlaif.toy:accuracy_reward")
    assert len(pairs) == 6  # 3 prompts x 2 distinct wrong answers; the prompt without a right one gives none
    assert all(toy.check(p["chosen"], p["solution"]) and not toy.check(p["rejected"], p["solution"]) for p in pairs)
    assert {p["category"] for p in pairs} == {"c0", "c1"} and {p["prompt_id"] for p in pairs} == {"p0", "p1", "p2"}
    assert len(je.known_pairs(candidates_table(), "rlaif.toy:accuracy_reward")) == 7  # the solution fills in
    path = write_pairs(pairs, tmp_path / "pairs.jsonl")
    assert [r["chosen"] for r in load_pairs(path)] == [p["chosen"] for p in pairs]


def test_judge_eval_writes_metrics_and_a_reliability_diagram(tmp_path):
    pairs = load_pairs(write_pairs(checked_pairs(candidates_table(), "rlaif.toy:accuracy_reward"),
                                   tmp_path / "pairs.jsonl"))
    figures = je.run_judge_eval(VerifierJudge("rlaif.toy:accuracy_reward"), pairs, "pairs.jsonl", tmp_path / "out",
                                attacks=je.load_attacks())
    assert figures["agreement"] == 1.0 and figures["flags"] == [] and set(figures["by_category"]) == {"c0", "c1"}
    assert figures["agreement_ci95"][0] > 0.5 and figures["ece"] == pytest.approx(1 - 1 / (1 + math.exp(-1)), abs=1e-4)
    stored = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert stored["by_category"]["c0"]["pairs"] + stored["by_category"]["c1"]["pairs"] == 6
    rows = {r["attack"]: r for r in stored["injection"]["rows"]}  # a checker is not fooled by any attack
    assert len(rows) == len(je.load_attacks()) + 2 and all(r["both_orders"] == 0 for r in rows.values())
    assert rows["one-token-colon"]["judged"] == 6 and rows["one-token-colon"]["slot1_only"] is None
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<svg" in html and "Reliability diagram" in html and "c1" in html


def test_the_cli_pools_held_out_categories_and_prints_the_defences(tmp_path):
    path = write_pairs(checked_pairs(candidates_table(), "rlaif.toy:accuracy_reward"), tmp_path / "pairs.jsonl")
    result = run_cli("judge-eval", "--pairs", path, "--judge", "verifier", "--verifier", "rlaif.toy:accuracy_reward",
                     "--no-injection", "--held-out-categories", "c1", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    stored = json.loads((tmp_path / "out" / "metrics.json").read_text())
    held, seen = stored["by_split"]["held-out categories"], stored["by_split"]["seen categories"]
    assert held["pairs"] == stored["by_category"]["c1"]["pairs"] and held["pairs"] + seen["pairs"] == 6
    assert [r["defence"] for r in stored["defences"]] == ["scores, ties dropped", "+ margin >= 0.2"]
    assert "defences" in result.stderr and "held-out categories" in result.stderr  # the console is stderr
    assert "Defences" in (tmp_path / "out" / "report.html").read_text()


def near_miss_pairs(split: str, k: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt_id": f"{split}{i}", "prompt": [{"role": "user", "content": toy.question(a, b)}],
             "chosen": str(a + b), "rejected": str(a + b + rng.choice([-10, -1, 1, 10])), "category": None}
            for i, (a, b) in enumerate(toy.problems()[split][:k])]


@pytest.fixture(scope="module")
def biased_judge(toy_paths):
    from rlaif.engines.transformers import TransformersEngine

    engine = TransformersEngine(str(toy_paths["biased-judge"]), batch_size=128, display_name="toy:biased-judge")
    return PairwiseJudge(engine, "toy-pairwise")


def test_calibration_moves_the_biased_judges_first_slot_rate_towards_half(biased_judge, tmp_path):
    scored, fit_on = near_miss_pairs("test", 60, seed=1), near_miss_pairs("train", 60, seed=2)
    before = je.evaluate_judge(biased_judge, scored)
    assert before["first_position_rate"] >= toy.BIASED_FIRST_SLOT_MIN
    assert any("first-position rate" in f for f in before["flags"])
    fitted = calibration.fit(biased_judge, fit_on, "train pairs")
    assert fitted.bias[1] - fitted.bias[0] < -2  # slot 2's verdict token is the one the judge starves
    biased_judge.calibration = fitted
    try:
        after = je.evaluate_judge(biased_judge, scored)
    finally:
        biased_judge.calibration = None
    assert abs(after["first_position_rate"] - 0.5) < abs(before["first_position_rate"] - 0.5) - 0.25
    assert not any("first-position rate" in f for f in after["flags"])
    # one pass gives both: the calibrated judge's defences table repeats the uncalibrated rows, then its own
    uncalibrated_rows = [r for r in after["defences"] if not r["defence"].startswith("(e)")]
    assert uncalibrated_rows == before["defences"] and len(after["defences"]) == len(before["defences"]) + 3
    assert before["defences"][1]["kept_share"] <= 0.1  # both orders averaged: the slot-1 judge's verdicts are ties
    # the stored parameters read back as a judge option; a fit on the scored prompts is refused
    path = tmp_path / "calibration.json"
    path.write_text(fitted.model_dump_json())
    cfg = load_config(None, [f"judge.calibration={path}"], {"judge.kind": "pairwise"})
    assert cfg.judge.calibration == fitted
    with pytest.raises(ConfigError, match="share 60 prompt"):
        calibration.check_disjoint(scored, scored, "a", "b")
    with pytest.raises(ConfigError, match="logprobs"):
        PairwiseJudge(biased_judge.engine, "toy-pairwise", mode="text", calibration=fitted)


def test_the_judge_stage_warns_about_a_slot_one_judge_and_records_its_calibration(toy_run, biased_judge):  # noqa: F811
    cfg = load_config(None, None, {"judge.kind": "pairwise", "judge.model": "toy:biased-judge",
                                   "judge.template": "toy-pairwise"})
    manifest = run_judge(cfg, str(toy_run), progress=False, engine=biased_judge.engine, overwrite=True)
    assert manifest.summary["first_position_rate"] >= 0.9
    assert "first-position rate" in manifest.summary["warning"] and "0.9" in manifest.summary["warning"]
    fitted = calibration.fit(biased_judge, near_miss_pairs("train", 40, seed=3))
    cfg.judge.calibration = fitted
    manifest = run_judge(cfg, str(toy_run), progress=False, engine=biased_judge.engine, overwrite=True)
    assert manifest.config["calibration"]["bias"] == fitted.bias
    assert manifest.summary["first_position_rate"] < 0.9 and "warning" not in manifest.summary


def test_a_failed_gate_names_the_judges_warning():
    from rlaif.diagnosis import explain_gate_stop

    warning = quality.flags({"first_position_rate": 1.0, "position_consistency": 0.0})[0]
    record = {"review": {"message": "review gate failed for runs/x iter-000: agreement below 0.70"},
              "stages": {"judge": {"summary": {"warning": warning}}, "filter": {"summary": {"pairs": 3, "prompts": 9}}}}
    text = explain_gate_stop(load_config(), record, {}, {})
    assert text.startswith("review gate failed") and "the judge stage warned: judge position-biased: first-position " \
        "rate 1.000 >= 0.9" in text
    assert "warned" not in explain_gate_stop(load_config(), {**record, "stages": {}}, {}, {})


def test_position_defences_turn_the_biased_judges_slot_one_wins_into_dropped_ties(biased_judge):
    """One order only, an attack in slot 1 wins nearly always on the judge that answers "1"; both orders
    averaged and the filter leave it (almost) nothing, with nonce delimiters and with the fixed tag."""
    result = je.injection_suite(biased_judge, near_miss_pairs("test", 16, seed=3), je.load_attacks())
    rows = {(r["attack"], r["delimiters"]): r for r in result["rows"]}
    assert result["attacked_pairs"] == 16 * len(je.load_attacks())
    for mode in ("nonce", "fixed"):
        every = rows[("all attacks", mode)]
        assert every["slot1_only"] >= toy.BIASED_FIRST_SLOT_MIN and every["slot2_only"] <= 1 - toy.BIASED_FIRST_SLOT_MIN
        assert every["both_orders_filtered"] <= 0.1 < every["slot1_only"] - 0.5
        assert every["kept"] <= 0.1  # the pairs became ties or flipped with the order: dropped, not won
        assert rows[("one-token-colon", mode)]["slot1_only"] >= toy.BIASED_FIRST_SLOT_MIN
