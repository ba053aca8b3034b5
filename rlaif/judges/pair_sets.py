"""Labelled pair sets: a `chosen` answer known to be better than the `rejected` one, per prompt.

The file format `rlaif judge-eval --pairs` reads (JSONL or Parquet): `prompt` (a string or a list
of chat messages), `chosen`, `rejected`, an optional `category`; any other column is carried along
(a verifier judge reads e.g. `constraint` from it). A pair set is also built from a run's candidates
and a checker: per prompt, a candidate the checker passes against each distinct one it fails.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError

from rlaif.errors import InputError
from rlaif.functions import load_function
from rlaif.inputs import read_records, to_messages
from rlaif.records import Message, extra_columns
from rlaif.runs import atomic_write_bytes

# The columns of a candidates table carried into a pair set built from it, besides its extra input columns.
CATEGORY_COLUMNS = ("category", "constraint")


class LabelledPair(BaseModel):
    """One row of a pair set; unknown columns are kept."""

    model_config = ConfigDict(extra="allow")

    prompt: StrictStr | list[Message]
    chosen: StrictStr
    rejected: StrictStr
    category: StrictStr | None = None


EXPECTED = {"prompt": "a string or a list of chat messages [{'role': ..., 'content': ...}]",
            "chosen": "a string (the better answer)", "rejected": "a string (the worse answer)",
            "category": "a string or null"}


def _problem(error: ValidationError) -> str:
    """The first problem of a row, as `field 'x': expected ..., got ...`."""
    first = error.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else "row"
    if first["type"] == "missing":
        return f"field '{name}' is missing; expected {EXPECTED.get(name, 'a value')}"
    got = first.get("input")
    got = "null" if got is None else type(got).__name__
    return f"field '{name}': expected {EXPECTED.get(name, first['msg'])}, got {got}"


def load_pairs(path: str | Path) -> list[dict]:
    """The validated rows of a pair-set file: {prompt (messages), chosen, rejected, category, ...carried}."""
    path = Path(path)
    rows = []
    for where, record in read_records(path):
        try:
            pair = LabelledPair.model_validate(record)
        except ValidationError as e:
            raise InputError(f"{where}: {_problem(e)}") from None
        row = pair.model_dump()
        row["prompt"] = to_messages(where, "prompt", row["prompt"])
        if row["chosen"] == row["rejected"]:
            raise InputError(f"{where}: fields 'chosen' and 'rejected' are the same text; expected two different "
                             "answers")
        row["prompt_id"] = f"pair-{len(rows)}"
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no pairs; expected one row per pair with prompt, chosen and rejected")
    return rows


def write_pairs(rows: list[dict], path: str | Path) -> Path:
    """A pair set as JSONL (`.jsonl`) or Parquet (`.parquet`), written atomically."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        data = sink.getvalue().to_pybytes()
    elif path.suffix.lower() == ".jsonl":
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    else:
        raise InputError(f"{path}: expected a .jsonl or .parquet file name for the pair set")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


def checked_pairs(candidates, checker: str, *, use_solution: bool = False, max_pairs: int | None = None,
                  seed: int = 0) -> list[dict]:
    """Pairs from a candidates table and a checker (TRL's reward signature, 1 = right), in a seeded order.

    Per prompt, the first candidate the checker passes is `chosen` against each distinct candidate it
    fails; with `use_solution`, a prompt without a passing candidate uses its `solution` column.
    Every extra input column is carried (and given to the checker), so `category` comes along.
    """
    fn = load_function(checker, "--checker")
    rows = [r for r in candidates.to_list() if r["failure"] is None]
    if not rows:
        raise InputError("no generated candidates to build labelled pairs from")
    extras = extra_columns(candidates.features)
    labels = fn(completions=[[{"role": "assistant", "content": r["text"]}] for r in rows],
                prompts=[r["prompt"] for r in rows], **{c: [r[c] for r in rows] for c in extras})
    by_prompt: dict[str, dict] = {}
    for r, ok in zip(rows, labels):
        g = by_prompt.setdefault(r["prompt_id"], {"row": r, "right": None, "wrong": []})
        if ok:
            g["right"] = g["right"] or r["text"]
        elif ok is not None and r["text"] not in g["wrong"]:
            g["wrong"].append(r["text"])
    pairs = []
    for pid, g in by_prompt.items():
        right = g["right"] or (g["row"].get("solution") if use_solution else None)
        carried = {c: g["row"][c] for c in extras}
        category = next((g["row"][c] for c in CATEGORY_COLUMNS if g["row"].get(c) is not None), None)
        pairs += [{**carried, "prompt_id": pid, "prompt": g["row"]["prompt"], "chosen": right, "rejected": w,
                   "category": category} for w in g["wrong"] if right and w != right]
    random.Random(seed).shuffle(pairs)
    return pairs[:max_pairs] if max_pairs else pairs
