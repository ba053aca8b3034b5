"""Minimal pairs for judge training (`rlaif.tasks.edits`): each edit on hand-written answers, the
verifier's veto, and the pairs built from candidate rows."""

from __future__ import annotations

import json
import random

import pytest

from rlaif.tasks.edits import EDITS, edit_pair, edit_pairs
from rlaif.tasks.ifeval import CHECKS
from test_tasks import CASES

OTHERS = ["Another answer about the sea, its many waves and the creatures living in it."]
# (constraint, args, answer, expected chosen, expected rejected): the answer passes -> it is chosen and its
# breach rejected; it fails -> its obeying edit is chosen and it is rejected
EDITED = [
    ("lowercase", {}, "The sea is deep. It is blue.", "the sea is deep. it is blue.", "The sea is deep. It is blue."),
    ("lowercase", {}, "the sea is deep. it is blue.", "the sea is deep. it is blue.", "The sea is deep. It is blue."),
    ("uppercase", {}, "THE SEA IS DEEP.", "THE SEA IS DEEP.", "The sea is deep."),
    ("max_words", {"n": 3}, "Waves crash on the sandy shore.", None, "Waves crash on the sandy shore."),
    ("max_words", {"n": 3}, "Waves crash.", "Waves crash.", None),
    ("min_words", {"n": 6}, "One two three four five six.", "One two three four five six.", None),
    ("min_words", {"n": 6}, "One two.", None, "One two."),
    ("include_keyword", {"word": "river"}, "The river flows. A river sings.", "The river flows. A river sings.",
     "The secret flows. A secret sings."),
    ("avoid_keyword", {"word": "water"}, "The water is cold.", "The secret is cold.", "The water is cold."),
    ("end_phrase", {"phrase": "That is all."}, "The sea is deep.", "The sea is deep. That is all.",
     "The sea is deep."),
    ("end_phrase", {"phrase": "That is all."}, "The sea is deep. That is all.", "The sea is deep. That is all.",
     "The sea is deep."),
    ("start_word", {"word": "Yes"}, "The sea is deep.", "Yes, the sea is deep.", "The sea is deep."),
    ("start_word", {"word": "Yes"}, "Yes, the sea is deep.", "Yes, the sea is deep.", "The sea is deep."),
    ("no_commas", {}, "The sea, deep and blue.", "The sea deep and blue.", "The sea, deep and blue."),
    ("bullets", {"n": 2}, "The sea is deep. It is blue. Fish swim.", "* The sea is deep.\n* It is blue.",
     "The sea is deep. It is blue. Fish swim."),
    ("bullets", {"n": 3}, "* a\n* b\n* c\n* d", "* a\n* b\n* c", "* a\n* b\n* c\n* d"),
    ("json_keys", {"keys": ["name", "color"]}, "The sea is deep and blue.",
     json.dumps({"name": "The sea is", "color": "deep and blue"}), "The sea is deep and blue."),
    ("title", {}, "<<Deep Sea>>\nWaves roll in.", "<<Deep Sea>>\nWaves roll in.", "Deep Sea\nWaves roll in."),
    ("title", {}, "Waves roll in.", "<<Waves Roll In>>\nWaves roll in.", "Waves roll in."),
    ("quotation", {}, '"The sea is deep."', '"The sea is deep."', "The sea is deep."),
    ("quotation", {}, "The sea is deep.", '"The sea is deep."', "The sea is deep."),
    ("postscript", {}, "The sea is deep.\nP.S. Bring a towel.", "The sea is deep.\nP.S. Bring a towel.",
     "The sea is deep."),
    ("arithmetic", {"answer": 45}, "17 + 28 = 46.", "17 + 28 = 45.", "17 + 28 = 46."),
    ("arithmetic", {"answer": 45}, "I think it is", "I think it is 45", "I think it is"),
    ("fact", {"answers": ["Paris"]}, "The capital of France is Berlin.", "The capital of France is Paris.",
     "The capital of France is Berlin."),
]


@pytest.mark.parametrize("name,args,text,chosen,rejected", EDITED, ids=[f"{e[0]}-{i}" for i, e in enumerate(EDITED)])
def test_edit_of_a_hand_written_answer(name, args, text, chosen, rejected):
    pair = edit_pair(text, name, args, random.Random(0), OTHERS)
    if name in ("include_keyword", "avoid_keyword"):  # the stand-in word and its place are drawn
        assert pair is not None and CHECKS[name](pair[0], **args) and not CHECKS[name](pair[1], **args)
        assert pair[0 if CHECKS[name](text, **args) else 1] == text
        assert len(pair[0].split()) == len(pair[1].split())  # one word swapped, none added
        return
    if name in ("max_words", "min_words"):  # where a cut falls, and how many words are added, is drawn (None above)
        assert pair is not None and CHECKS[name](pair[0], **args) and not CHECKS[name](pair[1], **args)
        for got, want in zip(pair, (chosen, rejected)):
            cut = got.endswith(".") and text.startswith(got[:-1])
            lengthened = got.startswith(text) and OTHERS[0].startswith(got[len(text):].strip(" .")) and \
                len(got.split()) <= args["n"] + 5
            assert got == want if want is not None else (cut or lengthened)
        return
    if name == "json_keys":  # the layout (indented or not) is drawn
        assert json.loads(pair[0]) == json.loads(chosen) and pair[1] == rejected
        return
    assert pair == (chosen, rejected)


@pytest.mark.parametrize("name,args,text,passes", [c for c in CASES if c[2].strip()],
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES) if c[2].strip()])
def test_every_pair_from_the_verifier_cases_is_labelled_by_the_verifier(name, args, text, passes):
    """Whatever an edit makes of an answer, a pair comes back only when the verifier passes its chosen side
    and fails its rejected side, and the answer itself keeps its verdict's side."""
    pair = edit_pair(text, name, args, random.Random(1), OTHERS)
    if pair is None:
        return
    chosen, rejected = pair
    assert CHECKS[name](chosen, **args) and not CHECKS[name](rejected, **args)
    assert (chosen if passes else rejected) == text


def test_an_edit_that_cannot_apply_gives_no_pair():
    assert edit_pair("Short.", "max_words", {"n": 5}, random.Random(0), []) is None  # no words to lengthen it
    assert edit_pair("It is Lyon.", "fact", {"answers": ["Paris"]}, random.Random(0), []) is None  # no known name
    assert edit_pair("   ", "lowercase", {}, random.Random(0), []) is None
    assert edit_pair("* a\n* b\n* c", "bullets", {"n": 3}, random.Random(0), []) is not None


def test_every_checked_constraint_has_an_edit_both_ways():
    assert set(EDITS) == set(CHECKS)
    assert all(len(pair) == 2 and all(callable(f) for f in pair) for pair in EDITS.values())


def test_edit_pairs_over_candidate_rows_keeps_columns_and_is_seeded():
    prompt = [{"role": "user", "content": "Describe the sea in all lowercase letters."}]
    rows = [{"prompt_id": "p1", "prompt": prompt, "text": t, "constraint": "lowercase", "constraint_args": "{}",
             "topic": "the sea"} for t in ("The sea is blue.", "the sea is green.", "")]
    rows.append({"prompt_id": "p2", "prompt": prompt, "text": "Hello", "constraint": None, "constraint_args": None,
                 "topic": None})
    pairs = edit_pairs(rows, seed=3)
    assert [(p["chosen"], p["rejected"], p["edit"]) for p in pairs] == [
        ("the sea is blue.", "The sea is blue.", "obey"), ("the sea is green.", "The sea is green.", "breach")]
    assert all(p["topic"] == "the sea" and p["prompt"] == prompt for p in pairs)
    assert edit_pairs(rows, seed=3) == pairs


def test_a_pair_is_asked_in_a_training_wording_of_its_constraint():
    from rlaif.tasks.constraints import CONSTRAINTS
    from rlaif.tasks.edits import reworded
    from rlaif.tasks.ifeval import wordings

    c, args = CONSTRAINTS["start_word"], {"word": "Today"}
    train = {c.prompt(w, "the sea", args) for w in wordings("start_word", len(c.wordings))["train"]}
    test = {c.prompt(w, "the sea", args) for w in wordings("start_word", len(c.wordings))["test"]}
    system = {"role": "system", "content": "Be brief."}
    seen = set()
    for k in range(40):
        for asked in sorted(train | test):
            out = reworded([system, {"role": "user", "content": asked}], "start_word", args, "the sea",
                           random.Random(k))
            assert out[0] == system and out[1]["content"] in train  # never a held-out wording
            seen.add(out[1]["content"])
    assert seen == train  # every training wording is drawn
    other = [{"role": "user", "content": "Start with Today, please."}]  # not one of the task set's wordings
    assert reworded(other, "start_word", args, "the sea", random.Random(0)) == other
    assert reworded(other, "arithmetic", {"answer": 3}, None, random.Random(0)) == other
