"""Near-duplicate detection: paraphrases with small edits are caught, distinct texts are kept."""

from __future__ import annotations

import json

from rlaif.stages.filter.dedup import NearDuplicateIndex, near_duplicates

BASE = ("Explain how a bicycle stays upright while moving: describe the role of the rider's steering, the "
        "geometry of the front fork and the gyroscopic effect of the spinning wheels, in simple words.")
EDITED = BASE.replace("simple words", "plain words")  # a small edit
CASE_SPACE = "  " + BASE.upper().replace(" ", "   ") + "\n"  # only case and whitespace differ
DISTINCT = [
    "Write a short poem about the sea at night, with the moon on the water and a lighthouse far away.",
    "List three differences between mitochondria and chloroplasts, with one sentence on each difference.",
    "Explain how a refrigerator keeps food cold: describe the compressor, the condenser and the evaporator.",
]


def test_index_catches_edits_and_exact_copies_and_keeps_distinct_texts():
    index = NearDuplicateIndex(threshold=0.85)
    out = index.add_many(["base", "d0", "edit", "d1", "case", "d2"], [BASE, DISTINCT[0], EDITED, DISTINCT[1], CASE_SPACE,
                                                                     DISTINCT[2]])
    assert out[0] is None and out[1] is None and out[3] is None and out[5] is None
    assert out[2][0] == "base" and 0.85 <= out[2][1] < 1.0
    assert out[4] == ("base", 1.0)
    assert len(index) == 4  # duplicates do not enter the index
    # later batches are checked against everything kept before (global across shards)
    again = index.add_many(["again", "new"], [EDITED, "Name the planets of the solar system in order from the sun."])
    assert again[0][0] == "base" and again[1] is None and len(index) == 5


def test_within_prompt_duplicates_point_at_the_earlier_text():
    out = near_duplicates(["46", "47", " 46 ", BASE, EDITED, DISTINCT[2]])
    assert out[0] is None and out[1] is None and out[3] is None and out[5] is None
    assert out[2] == (0, 1.0) and out[4][0] == 3
    assert near_duplicates(["only one"]) == [None]


def test_no_false_duplicates_among_the_toy_prompts(toy_paths):
    """9,000 short, similar prompts ("What is 12+34?" vs "What is 12+3?"): all distinct at the default threshold."""
    rows = [json.loads(line) for line in toy_paths["prompts-train"].read_text().splitlines()]
    out = NearDuplicateIndex().add_many([r["id"] for r in rows], [r["messages"][0]["content"] for r in rows])
    assert sum(v is not None for v in out) == 0
