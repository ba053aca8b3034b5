"""Reading prompts: JSONL, Parquet, CSV or a saved `datasets` directory -> a validated Dataset.

The result has an `id`, a `messages` chat list, and every other input column unchanged (carried
through to the candidates, so verifiers, stratified review and GRPO find e.g. `solution` by name).
Validation happens here, at the edge, with errors that name the file, the line or record, and the
field. Rows are streamed into an Arrow file (memory-mapped), so a large input costs little memory.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from rlaif import sources
from rlaif.errors import InputError
from rlaif.records import CANDIDATE_COLUMNS
from rlaif.runs import fingerprint_files

# Part of the datasets cache key of a read input: a change to the validation rules re-reads every file.
VALIDATION_VERSION = 2
SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv"}
RESERVED = set(CANDIDATE_COLUMNS) | {"messages"}


def resolve_input(path: str) -> Path:
    """A prompt file path; registered source names (`toy:train`, `tasks:ifeval-lite:test`) become local paths."""
    return Path(sources.resolve(path, "input"))


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Decoded lines with 1-based numbers; bad UTF-8 and NUL bytes are errors naming the line."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if b"\x00" in raw:
                raise InputError(f"{path}:{number}: contains a NUL byte; expected UTF-8 text")
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{number}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})") from None


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict]]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{number}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
        yield f"{path}:{number}", record


def _csv_records(path: Path, prompt_column: str | None) -> Iterator[tuple[str, dict]]:
    """Strict CSV: an unterminated quote or a stray quote is an error naming the line, never part of a prompt."""
    text = "".join(line for _, line in _lines(path))
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    start = 1
    try:
        header = reader.fieldnames or []
        wanted = prompt_column or "prompt"
        if wanted not in header:
            raise InputError(f"{path}:1: CSV header has columns {header}; expected a '{wanted}' column "
                             "(or name the prompt column with --prompt-column)")
        start = 2
        for row in reader:
            if None in row:
                raise InputError(f"{path}:{start}: more fields than the header's {len(header)} columns")
            yield f"{path}:{start}", row
            start = reader.line_num + 1
    except csv.Error as e:
        raise InputError(f"{path}:{start}: malformed CSV ({e}); quote fields that hold commas, "
                         "quotes or newlines, and close every quote") from None


def _table_records(path: Path, kind: str) -> Iterator[tuple[str, dict]]:
    if kind == "parquet":
        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise InputError(f"{path}: not a readable Parquet file ({e})") from None
        rows = (row for batch in batches for row in batch.to_pylist())
    else:
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError:
            raise InputError(f"{path}: a directory, but not a saved `datasets` dataset (no dataset_info.json / "
                             "state.json); expected a JSONL, Parquet or CSV file, or a save_to_disk directory") from None
        if isinstance(ds, datasets.DatasetDict):
            raise InputError(f"{path}: a DatasetDict with splits {list(ds)}; point --input at one split's directory")
        rows = iter(ds)
    for index, row in enumerate(rows):
        yield f"{path} record {index}", row


def to_messages(where: str, column: str, value) -> list[dict]:
    """A prompt value (a string or a chat message list) as validated chat messages; `where` names the record."""
    if isinstance(value, str) and column == "messages":
        raise InputError(f"{where}: field 'messages' is a string; expected a list of chat messages "
                         "[{'role': 'user', 'content': ...}] (put a plain prompt in a 'prompt' field)")
    if isinstance(value, str):
        if not value.strip():
            raise InputError(f"{where}: field '{column}' is empty; expected a non-empty prompt")
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value:
        out = []
        for k, m in enumerate(value):
            if not isinstance(m, dict) or set(m) - {"role", "content"} or not isinstance(m.get("content"), str) \
                    or m.get("role") not in ("system", "user", "assistant", "tool"):
                raise InputError(f"{where}: field '{column}[{k}]' must be {{'role': system|user|assistant|tool, "
                                 f"'content': string}}, got {json.dumps(m)[:120]}")
            out.append({"role": m["role"], "content": m["content"]})
        if not any(m["content"].strip() for m in out):
            raise InputError(f"{where}: field '{column}' has only empty messages; expected a non-empty prompt")
        return out
    kind = "an empty list" if value == [] else type(value).__name__
    raise InputError(f"{where}: field '{column}' must be a string or a list of chat messages, got {kind}")


def _json_kind(value) -> str:
    """The type of a carried value as a user reads it; integers and floats are both numbers (Arrow widens them)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    for kind, types in (("a string", str), ("a list", list), ("an object", dict)):
        if isinstance(value, types):
            return kind
    return type(value).__name__


def prompt_id(messages: list[dict]) -> str:
    """Deterministic id from the content, for inputs without an `id` column."""
    return hashlib.sha1(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


def _validated(path: Path, kind: str, prompt_column: str | None) -> Iterator[dict]:
    records = _jsonl_records(path) if kind == "jsonl" else _csv_records(path, prompt_column) if kind == "csv" \
        else _table_records(path, kind)
    seen: dict[str, str] = {}
    column_types: dict[str, tuple[str, str]] = {}  # carried column -> (type name, where first seen)
    column = prompt_column
    for where, record in records:
        if column is None:
            column = "messages" if "messages" in record else "prompt"
        if column not in record:
            raise InputError(f"{where}: no '{column}' field (fields: {sorted(record)}); expected a 'prompt' string or a "
                             "'messages' list, or name the column with --prompt-column")
        messages = to_messages(where, column, record[column])
        raw_id = record.get("id")
        if raw_id is None or raw_id == "":
            pid = prompt_id(messages)
        elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool):
            pid = str(raw_id)
        else:
            raise InputError(f"{where}: field 'id' must be a string or an integer, got {type(raw_id).__name__}")
        if pid in seen:
            raise InputError(f"{where}: duplicate id {pid!r} (first at {seen[pid]}); ids must be unique "
                             "(drop the 'id' column to derive ids from the content)")
        seen[pid] = where
        extras = {k: v for k, v in record.items() if k not in (column, "id")}
        clash = sorted(set(extras) & RESERVED)
        if clash:
            raise InputError(f"{where}: column(s) {clash} clash with rlaif's own candidate columns; rename them")
        for name, value in extras.items():
            if value is None:
                continue
            kind = _json_kind(value)
            first = column_types.setdefault(name, (kind, where))
            if first[0] != kind:
                raise InputError(f"{where}: field '{name}' is {kind}, but it is {first[0]} at {first[1]}; a column "
                                 "must hold one type (quote the numbers, or convert the column)")
        yield {"id": pid, "messages": messages, **extras}
    if not seen:
        raise InputError(f"{path}: no records; expected at least one prompt")


def normalise_prompts(dataset: datasets.Dataset, prompt_column: str | None = None) -> datasets.Dataset:
    """A Dataset given in Python, as `read_prompts` gives a file: every row with an `id` and a `messages` list."""
    column = prompt_column or ("messages" if "messages" in dataset.column_names else "prompt")
    if column not in dataset.column_names:
        raise InputError(f"dataset has columns {dataset.column_names}; expected a 'prompt' or 'messages' column")

    def fix(row, index):
        messages = to_messages(f"dataset record {index}", column, row[column])
        return {"messages": messages, "id": str(row["id"]) if row.get("id") not in (None, "") else prompt_id(messages)}

    drop = [column] if column != "messages" else []
    return dataset.map(fix, with_indices=True, remove_columns=drop)


def _generate(path: str, kind: str, prompt_column: str | None, fingerprint: str, validation: int):
    yield from _validated(Path(path), kind, prompt_column)


def _check_readable(p: Path) -> None:
    """Say why an input cannot be opened: missing, a dangling link, a link loop, or no permission."""
    try:
        p.stat()
    except FileNotFoundError:
        if p.is_symlink():
            raise InputError(f"{p}: a symbolic link to {os.readlink(p)!r}, which does not exist") from None
        raise InputError(f"{p}: input not found") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError(f"{p}: a loop of symbolic links; point --input at the file itself") from None
        raise InputError(f"{p}: cannot open the input ({e.strerror})") from None
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: cannot read the input (permission denied)")


def read_prompts(path: str, prompt_column: str | None = None) -> tuple[datasets.Dataset, str]:
    """Validated prompts as a memory-mapped Dataset, plus the input's content fingerprint."""
    p = resolve_input(path)
    _check_readable(p)
    if p.is_dir():
        kind = "datasets"
        fingerprint = fingerprint_files([f for f in p.rglob("*") if f.is_file()])
    else:
        kind = SUFFIXES.get(p.suffix.lower())
        if kind is None:
            raise InputError(f"{p}: unknown file type {p.suffix or '(none)'!r}; expected .jsonl, .parquet, .csv or a "
                             "saved datasets directory")
        fingerprint = fingerprint_files([p])
    fingerprint = hashlib.sha256(f"{fingerprint}:{prompt_column}".encode()).hexdigest()[:16]
    datasets.disable_progress_bars()
    try:
        ds = datasets.Dataset.from_generator(
            _generate, gen_kwargs={"path": str(p), "kind": kind, "prompt_column": prompt_column,
                                   "fingerprint": fingerprint, "validation": VALIDATION_VERSION},
        )
    except datasets.exceptions.DatasetGenerationError as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, InputError):
            raise cause from None
        raise InputError(f"{p}: could not read the prompts ({cause or e})") from None
    return ds, fingerprint
