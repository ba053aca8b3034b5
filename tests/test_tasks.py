"""The shipped task set: every verifier on hand-written cases, the splits, the `tasks:` source, and the
verifier used as a judge, an evaluate checker and a GRPO reward on the toy models."""

from __future__ import annotations

import json
import os
import re
from collections import Counter

import datasets
import pytest

from conftest import run_cli
from rlaif import sources, toy
from rlaif.errors import ConfigError
from rlaif.runs import load_table, stage_dir
from rlaif.stages.evaluate import accuracy, check_columns, checked_accuracy, summary_rows
from rlaif.tasks import TASKS, ifeval, known_names, resolve, verify
from rlaif.tasks.constraints import CONSTRAINTS

JSON_FENCED = '```json\n{"name": "sea", "color": "blue"}\n```'
# (constraint, args, response, passes)
CASES = [
    ("lowercase", {}, "the ocean is deep and blue.", True),
    ("lowercase", {}, "the ocean is deep, 4 km.  \n", True),
    ("lowercase", {}, "The ocean is deep.", False),
    ("lowercase", {}, "the ocean is deep. I love it", False),
    ("lowercase", {}, "42.", False),  # nothing cased: not "in lowercase letters"
    ("lowercase", {}, "   ", False),
    ("uppercase", {}, "THE OCEAN IS DEEP!", True),
    ("uppercase", {}, "THE OCEAN IS 4 KM DEEP.\n", True),
    ("uppercase", {}, "THE OCEAN is deep.", False),
    ("uppercase", {}, "", False),
    ("max_words", {"n": 5}, "Waves crash on the shore.", True),
    ("max_words", {"n": 5}, "  Waves   crash!  ", True),
    ("max_words", {"n": 5}, "Waves crash on the sandy shore.", False),
    ("max_words", {"n": 5}, "Don't well-known words count once?", True),  # contractions, hyphens: one word each
    ("max_words", {"n": 5}, "...", False),
    ("min_words", {"n": 6}, "one two three four five six", True),
    ("min_words", {"n": 6}, "The sea is deep, wide and blue.\n", True),
    ("min_words", {"n": 6}, "one, two, three, four, five.", False),
    ("min_words", {"n": 6}, "one two three - four five", False),  # a lone dash is no word
    ("include_keyword", {"word": "river"}, "The River flows.", True),  # case of the keyword
    ("include_keyword", {"word": "river"}, "Two rivers meet here.", True),  # plain plural
    ("include_keyword", {"word": "river"}, "The riverbank is green.", False),  # whole words only
    ("include_keyword", {"word": "river"}, "A stream flows.", False),
    ("avoid_keyword", {"word": "water"}, "The sea is deep and blue.", True),
    ("avoid_keyword", {"word": "water"}, "Waterfalls are tall.", True),  # another word that contains it
    ("avoid_keyword", {"word": "water"}, "The WATER is cold.", False),
    ("avoid_keyword", {"word": "water"}, "Deep waters.", False),
    ("avoid_keyword", {"word": "water"}, "", False),
    ("end_phrase", {"phrase": "That is all."}, "The sea is deep. That is all.", True),
    ("end_phrase", {"phrase": "That is all."}, "The sea is deep. that is all.  \n", True),
    ("end_phrase", {"phrase": "That is all."}, '"The sea is deep. That is all."', True),
    ("end_phrase", {"phrase": "That is all."}, "The sea is deep. That is all", False),
    ("end_phrase", {"phrase": "That is all."}, "That is all. The sea is deep.", False),
    ("start_word", {"word": "Yes"}, "Yes, the sea is deep.", True),
    ("start_word", {"word": "Yes"}, "**yes** the sea is deep.", True),
    ("start_word", {"word": "Yes"}, "Yesterday the sea was calm.", False),
    ("start_word", {"word": "Yes"}, "The sea: yes.", False),
    ("no_commas", {}, "The sea is deep. It is blue.\n", True),
    ("no_commas", {}, "The sea is 4000 m deep; it's blue!", True),
    ("no_commas", {}, "The sea is deep, and blue.", False),
    ("no_commas", {}, "The sea is deep，and blue.", False),  # a full-width comma counts
    ("no_commas", {}, " ", False),
    ("bullets", {"n": 3}, "* one\n* two\n* three", True),
    ("bullets", {"n": 3}, "Facts:\n- one\n  - two\n• three\n", True),
    ("bullets", {"n": 3}, "* one\n* two", False),
    ("bullets", {"n": 3}, "* one\n* two\n* three\n* four", False),
    ("bullets", {"n": 3}, "1. one\n2. two\n3. three", False),  # numbered lines are not bullets
    ("bullets", {"n": 3}, "**one**\n*two*\n---\n* three", False),  # bold, italics and rules are not bullets
    ("json_keys", {"keys": ["name", "color"]}, '{"name": "sea", "color": "blue"}', True),
    ("json_keys", {"keys": ["name", "color"]}, JSON_FENCED, True),
    ("json_keys", {"keys": ["name", "color"]}, '  {"name": "sea", "color": "blue", "size": 3}\n', True),
    ("json_keys", {"keys": ["name", "color"]}, '{"name": "sea"}', False),
    ("json_keys", {"keys": ["name", "color"]}, 'Here it is: {"name": "sea", "color": "blue"}', False),
    ("json_keys", {"keys": ["name", "color"]}, '["name", "color"]', False),
    ("json_keys", {"keys": ["name", "color"]}, "{'name': 'sea', 'color': 'blue'}", False),
    ("title", {}, "<<The Deep Sea>>\nWaves roll in.", True),
    ("title", {}, "A poem: <<sea>> waves.", True),
    ("title", {}, "<< >>\nWaves roll in.", False),
    ("title", {}, "<The Deep Sea>\nWaves roll in.", False),
    ("title", {}, "Title: The Deep Sea", False),
    ("quotation", {}, '"The sea is deep."', True),
    ("quotation", {}, '  “The sea is deep.”\n', True),
    ("quotation", {}, 'The sea is "deep".', False),
    ("quotation", {}, '"The sea is deep.', False),
    ("quotation", {}, '""', False),
    ("postscript", {}, "The sea is deep.\nP.S. Bring a towel.", True),
    ("postscript", {}, "The sea is deep.\n\np. s. bring a towel", True),
    ("postscript", {}, "The sea is deep. Bring a towel.", False),
    ("postscript", {}, "The sea is deep.\nPS Bring a towel.", False),
    ("arithmetic", {"answer": 45}, "45", True),
    ("arithmetic", {"answer": 45}, "17 + 28 = 45.", True),
    ("arithmetic", {"answer": 1200}, "The result is 1,200.", True),
    ("arithmetic", {"answer": 45}, "45 is wrong; it is 46", False),
    ("arithmetic", {"answer": 45}, "forty-five", False),
    ("arithmetic", {"answer": 45}, "", False),
    ("fact", {"answers": ["Paris"]}, "The capital of France is paris.", True),
    ("fact", {"answers": ["New Delhi", "Delhi"]}, "It is Delhi.", True),
    ("fact", {"answers": ["Paris"]}, "Lyon.", False),
    ("fact", {"answers": ["Paris"]}, "Parisian food is great.", False),
    ("fact", {"answers": ["0", "zero"]}, "Water freezes at 100 degrees.", False),
]


@pytest.mark.parametrize("name,args,text,expected", CASES,
                         ids=[f"{c[0]}-{i}-{'pass' if c[3] else 'fail'}" for i, c in enumerate(CASES)])
def test_verifier_case(name, args, text, expected):
    assert verify([text], [name], [json.dumps(args)]) == [float(expected)]


def test_every_check_has_passing_and_failing_cases():
    seen = Counter((c[0], c[3]) for c in CASES)
    for name in ifeval.CHECKS:
        assert seen[(name, True)] >= 2 and seen[(name, False)] >= 2, name


def test_verify_takes_trl_calls_and_rejects_unknown_constraints():
    conversational = [[{"role": "assistant", "content": "the sea."}], [{"role": "assistant", "content": "The sea."}]]
    # TRL passes prompts, completion ids and the trainer state besides the dataset's columns
    assert verify(conversational, ["lowercase"] * 2, [{}, "{}"], prompts=["p", "p"], completion_ids=[[1], [2]],
                  trainer_state=None) == [1.0, 0.0]
    assert verify(["x"], [None], [None]) == [None]  # a row from outside the task set: not applicable
    with pytest.raises(ValueError, match="unknown constraint 'shouting'; expected one of lowercase"):
        verify(["x"], ["shouting"], ["{}"])


def test_every_row_is_checkable_and_an_empty_answer_passes_none():
    for split in ifeval.SPLITS:
        rows = ifeval.rows(split)
        assert verify([""] * len(rows), [r["constraint"] for r in rows], [r["constraint_args"] for r in rows]) \
            == [0.0] * len(rows)
        for r in rows:
            assert r["category"] == r["constraint"] and isinstance(json.loads(r["constraint_args"]), dict)
            assert (r["solution"] is not None) == (r["category"] in ("arithmetic", "fact"))
            assert (r["topic"] is not None) == (r["category"] in CONSTRAINTS)
            assert len(r["messages"][0]["content"]) <= 110  # short prompts for a small model


def test_known_answers_pass_their_own_rows():
    rows = [r for r in ifeval.rows("test") if r["solution"] is not None]
    assert verify([r["solution"] for r in rows], [r["constraint"] for r in rows],
                  [r["constraint_args"] for r in rows]) == [1.0] * len(rows)


# ---------------------------------------------------------------- splits


def _wording(row) -> str:
    return row["id"].rsplit("/w", 1)[1]


def test_splits_are_disjoint_by_topic_wording_problem_and_type():
    train, test = ifeval.rows("train"), ifeval.rows("test")
    assert not {r["topic"] for r in train if r["topic"]} & {r["topic"] for r in test if r["topic"]}
    for category in ifeval.CATEGORIES:
        w_train = {_wording(r) for r in train if r["category"] == category}
        w_test = {_wording(r) for r in test if r["category"] == category}
        assert w_test and not w_train & w_test, category
    assert not {r["messages"][0]["content"] for r in train} & {r["messages"][0]["content"] for r in test}
    assert not {r["id"].split("/")[1] for r in train if r["category"] in ("arithmetic", "fact")} \
        & {r["id"].split("/")[1] for r in test if r["category"] in ("arithmetic", "fact")}
    train_types, test_types = Counter(r["category"] for r in train), Counter(r["category"] for r in test)
    assert set(ifeval.HELD_OUT_TYPES) <= set(test_types) and not set(ifeval.HELD_OUT_TYPES) & set(train_types)
    assert set(test_types) == set(ifeval.CATEGORIES) == set(train_types) | set(ifeval.HELD_OUT_TYPES)


def test_split_sizes_ids_and_balanced_prefixes():
    train, test = ifeval.rows("train"), ifeval.rows("test")
    assert len(train) >= 1500 and sum(r["category"] in CONSTRAINTS for r in test) >= 600
    for rows in (train, test):
        assert len({r["id"] for r in rows}) == len(rows)
        assert {r["category"] for r in rows[:200]} == {r["category"] for r in rows}
        counts = Counter(r["category"] for r in test[:200])
        assert max(counts.values()) - min(counts.values()) <= 1


def test_splits_are_deterministic_and_keyword_arguments_fit_the_prompt():
    assert ifeval.rows("test") == ifeval.rows("test")
    for r in ifeval.rows("test"):
        args, prompt = json.loads(r["constraint_args"]), r["messages"][0]["content"]
        for value in args.values() if r["category"] in CONSTRAINTS else []:
            for part in value if isinstance(value, list) else [value]:
                assert re.search(re.escape(str(part)), prompt), (r["id"], prompt)


# ---------------------------------------------------------------- the tasks: source


def test_source_writes_each_split_once_and_names_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("RLAIF_CACHE", str(tmp_path))
    path = sources.resolve("tasks:ifeval-lite:test", "evaluate.prompts")
    assert path.startswith(str(tmp_path / "tasks")) and path.endswith("ifeval-lite-test.jsonl")
    lines = open(path).read().splitlines()
    assert [json.loads(x) for x in lines] == ifeval.rows("test")
    mtime = os.stat(path).st_mtime_ns
    assert resolve("tasks:ifeval-lite:test") == path and os.stat(path).st_mtime_ns == mtime  # not rewritten
    assert not list(tmp_path.rglob(".*tmp*"))
    assert resolve("tasks:ifeval-lite:train").replace("train", "test") == path  # one version directory
    for bad in ("tasks:ifeval-lite:dev", "tasks:ifeval", "tasks:"):
        with pytest.raises(ConfigError) as e:
            sources.resolve(bad, "input")
        assert str(e.value) == (f"field 'input': {bad!r}: unknown task set; expected one of "
                                "tasks:ifeval-lite:train, tasks:ifeval-lite:test")
    assert known_names() == ["tasks:ifeval-lite:train", "tasks:ifeval-lite:test"] and list(TASKS) == ["ifeval-lite"]


@pytest.mark.slow
def test_cli_generate_reads_the_task_set_and_the_verifier_judges_it(tmp_path, toy_paths):
    run = tmp_path / "run"
    done = run_cli("generate", "-i", "tasks:ifeval-lite:test", "--limit", "16", "-m", "toy:policy", "-o", run,
                   "--n", "2", "--max-new-tokens", "8", "--quiet")
    assert done.returncode == 0, done.stderr
    candidates = load_table(stage_dir(run, "generate"), "candidates")
    assert len(candidates) == 32 and {"constraint", "constraint_args", "category", "solution"} <= set(
        candidates.column_names)
    assert sorted(set(candidates["category"])) == sorted(ifeval.CATEGORIES)  # the first 16 rows: one per category

    judged = run_cli("judge", run, "--judge", "verifier", "--verifier", "rlaif.tasks:verify", "--quiet")
    assert judged.returncode == 0, judged.stderr
    scores = load_table(stage_dir(run, "judge"), "scores")
    assert scores["score"] == verify(scores["text"], scores["constraint"], scores["constraint_args"])
    by_type = {r["category"]: r["score"] for r in scores}
    # 8 tokens of a character-level model: never 15+ words, and (almost surely) some word within 5..15
    assert by_type["min_words"] == 0.0 and by_type["max_words"] == 1.0


def test_cli_unknown_split_is_one_line(tmp_path):
    bad = run_cli("generate", "-i", "tasks:ifeval-lite:dev", "-m", "toy:policy", "-o", tmp_path / "run")
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("error: field 'input': 'tasks:ifeval-lite:dev': unknown task set; expected one of "
                                  "tasks:ifeval-lite:train, tasks:ifeval-lite:test")


# ---------------------------------------------------------------- evaluate checker


def test_evaluate_reports_pass_rates_per_constraint_type():
    rows = [r for r in ifeval.rows("test") if r["category"] in ("lowercase", "arithmetic")][:6]
    prompts = datasets.Dataset.from_list(rows)
    outs = [["the sea.", "The sea."] if r["category"] == "lowercase" else [r["solution"], "no idea"] for r in rows]
    outs[0] = ["the sea.", "the sea."]
    result = accuracy(verify, prompts, outs, "solution")
    assert [r["category"] for r in rows] == ["lowercase", "arithmetic"] * 3  # rows come interleaved by category
    assert result["n"] == 12 and result["value"] == pytest.approx(7 / 12)
    assert result["by_category"]["lowercase"]["value"] == pytest.approx(4 / 6)
    assert result["by_category"]["arithmetic"] == {**result["by_category"]["arithmetic"], "value": 0.5, "n": 6}
    for fig in [result, *result["by_category"].values()]:
        lo, hi = fig["ci95"]
        assert 0 <= lo <= fig["value"] <= hi <= 1
    assert list(summary_rows({"greedy_accuracy": result})) == ["greedy_accuracy", "  arithmetic", "  lowercase"]
    # the (answer, solution) checkers still work, on the rows that have a solution
    sums = datasets.Dataset.from_list(toy.prompt_rows("test")[:3])
    old = accuracy(toy.check, sums, [[s, "x"] for s in sums["solution"]], "solution")
    assert old["value"] == 0.5 and set(old["by_category"]) <= {"carry", "no-carry"}


def test_checked_accuracy_of_a_policy_on_the_task_set(policy_engine):
    prompts = datasets.Dataset.from_list(ifeval.rows("test")[:16])
    result = checked_accuracy(policy_engine, prompts, verify, "solution", max_new_tokens=8)
    assert result["n"] == 16 and set(result["by_category"]) == set(ifeval.CATEGORIES)
    assert result["by_category"]["min_words"]["value"] == 0.0 and result["by_category"]["max_words"]["value"] == 1.0
    assert result["value"] == pytest.approx(sum(v["value"] for v in result["by_category"].values()) / 16)


def test_evaluate_refuses_prompts_without_the_constraint_columns():
    sums = datasets.Dataset.from_list(toy.prompt_rows("test")[:3])
    with pytest.raises(ConfigError, match=r"reads column\(s\) \['constraint', 'constraint_args'\] that the prompts"):
        check_columns(verify, sums, "solution")
    check_columns(verify, datasets.Dataset.from_list(ifeval.rows("test")[:3]), "no-such-column")


# ---------------------------------------------------------------- GRPO reward


@pytest.mark.slow
def test_verify_is_a_grpo_reward_reading_the_row_columns(tmp_path, toy_paths):
    from rlaif.config import load_config
    from rlaif.stages.train import run_train

    # "at most N words" (N >= 5): 8 tokens of the character-level toy policy nearly always obey it
    rows = [r for r in ifeval.rows("train") if r["category"] == "max_words"][:64]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, ["train.base=toy:policy", "train.max_steps=2", "train.batch_size=16",
                             "train.grpo.reward=rlaif.tasks:verify", "train.grpo.max_completion_length=8",
                             f"train.grpo.prompts={prompts}"])
    run_train(cfg, tmp_path / "run", method="grpo", progress=False)
    history = json.loads((tmp_path / "run" / "iter-000" / "train" / "grpo" / "log_history.json").read_text())
    rewards = [e["rewards/verify/mean"] for e in history if "rewards/verify/mean" in e]
    assert len(rewards) == 2 and min(rewards) >= 0.5, rewards
