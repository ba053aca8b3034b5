"""The export stage: the filter's preference pairs as the datasets TRL's trainers read, unchanged.

    preference  prompt / chosen / rejected  (DPOTrainer, RewardTrainer; chosen/rejected: the assistant turn)
    unpaired    prompt / completion / label (KTOTrainer; every chosen is a positive, every rejected a negative)
    sft         messages                    (SFTTrainer on the best candidate per prompt: rejection sampling)

Conversational message lists by default, TRL's standard text form on request; provenance columns
(scores, margin, judge, review status) ride along and the trainers ignore them. `export` is the
Python API; `run_export` writes `iter-K/export/<kind>/` (a DatasetDict on disk, where `rlaif train`
reads it) and optionally a copy elsewhere.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from pathlib import Path

import datasets

from rlaif.config import ExportConfig, PipelineConfig
from rlaif.errors import ConfigError, InputError, RunError
from rlaif.functions import load_function
from rlaif.inputs import to_messages
from rlaif.review.gate import check_gate, store_path
from rlaif.runs import require_stage, sha256_file, stage_dir

log = logging.getLogger(__name__)

KINDS = ("preference", "unpaired", "sft")
FORMATS = ("hf", "trl", "jsonl", "parquet")
TRAINER_COLUMNS = {"preference": ["prompt", "chosen", "rejected"], "unpaired": ["prompt", "completion", "label"],
                   "sft": ["messages"]}
# What a review verdict does to a pair: kept as judged, flipped, or not used.
REVIEW_EFFECT = {"unreviewed": "keep", "agreed": "keep", "disagreed": "flip", "tie": "drop", "both-bad": "drop"}


def _text(messages: list[dict]) -> str:
    """A message list as plain text (TRL's standard form): the contents, one per line."""
    return "\n".join(m["content"] for m in messages)


def _check(kind: str, fmt: str | None = None) -> None:
    if kind not in KINDS:
        raise ConfigError(f"export kind {kind!r} is not one of: {', '.join(KINDS)} (option --kind / export.kind)")
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not one of: {', '.join(FORMATS)} (option --format / export.format)")


def apply_review(pairs: datasets.Dataset, reviewed_only: bool = False) -> datasets.Dataset:
    """Pairs as people judged them: a `disagreed` pair is flipped, `tie` and `both-bad` are dropped."""
    def fix(row):
        if REVIEW_EFFECT.get(row["review_status"], "keep") == "flip":
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
            row["chosen_index"], row["rejected_index"] = row["rejected_index"], row["chosen_index"]
            row["chosen_score"], row["rejected_score"] = row["rejected_score"], row["chosen_score"]
        return row

    keep = [i for i, s in enumerate(pairs["review_status"]) if REVIEW_EFFECT.get(s, "keep") != "drop"
            and not (reviewed_only and s == "unreviewed")]
    out = pairs.select(keep)
    if any(s == "disagreed" for s in out["review_status"]):
        out = out.map(fix)
    return out


def review_gate(cfg: PipelineConfig, run: str, iteration: int, *, min_agreement: float | None,
                reviewed_only: bool) -> None:
    """Refuse to export when the judge-human agreement gate fails.

    Called by `run_export` before anything is written. The gate runs whenever this iteration has a
    review (`iter-K/review/review.sqlite`), with `review.min_agreement` / `review.min_reviewed`, and
    when asked for (`--min-agreement`, which overrides the threshold, or `--reviewed-only`).
    """
    if min_agreement is None and not reviewed_only and not store_path(run, iteration).exists():
        return

    threshold = cfg.review.min_agreement if min_agreement is None else min_agreement
    result = check_gate(run, iteration, threshold, cfg.review.min_reviewed)
    log.info("%s", result.message)
    result.require()


def _split(ds: datasets.Dataset, test_size: float | None, seed: int) -> datasets.DatasetDict:
    """A seeded train/test split by prompt, so no prompt lands in both."""
    if not test_size:
        return datasets.DatasetDict({"train": ds})
    ids = sorted(set(ds["prompt_id"]))
    n_test = int(test_size) if test_size >= 1 else math.ceil(test_size * len(ids))
    if not 0 < n_test < len(ids):
        raise ConfigError(f"export.test_size {test_size} leaves {len(ids) - n_test} of {len(ids)} prompts for "
                          "training; expected a share in (0, 1) or a count under the number of prompts")
    random.Random(seed).shuffle(ids)
    test = set(ids[:n_test])
    flags = [p in test for p in ds["prompt_id"]]
    return datasets.DatasetDict({"train": ds.select([i for i, f in enumerate(flags) if not f]),
                                 "test": ds.select([i for i, f in enumerate(flags) if f])})


def _provenance(pairs: datasets.Dataset, drop: tuple[str, ...]) -> list[str]:
    return [c for c in pairs.column_names if c not in drop]


def export(pairs: datasets.Dataset, kind: str = "preference", *, conversational: bool = True,
           test_size: float | None = None, seed: int = 0) -> datasets.DatasetDict:
    """Python API: the filter's pairs -> a DatasetDict (`train`, and `test` when `test_size` is set) of `kind`."""
    _check(kind)
    if len(pairs) == 0:
        raise InputError("no preference pairs to export: the filter dropped every candidate (see its dropped table)")
    if kind == "preference":
        out = pairs.map(lambda r: {"prompt": r["prompt"] if conversational else _text(r["prompt"]),
                                   "chosen": r["chosen"] if conversational else _text(r["chosen"]),
                                   "rejected": r["rejected"] if conversational else _text(r["rejected"])})
    elif kind == "unpaired":
        out = _unpaired(pairs, conversational)
    else:
        out = _sft(pairs, conversational)
    return _split(out, test_size, seed)


def _unpaired(pairs: datasets.Dataset, conversational: bool) -> datasets.Dataset:
    """One row per distinct candidate: chosen -> label True, rejected -> False (a candidate that was both is dropped)."""
    keep = _provenance(pairs, ("pair_id", "chosen", "rejected", "chosen_index", "rejected_index", "chosen_score",
                               "rejected_score", "margin", "preference", "consistent", "strategy", "prompt"))
    rows: dict[tuple[str, int], dict] = {}
    conflicted: set[tuple[str, int]] = set()
    for r in pairs:
        for side, label in (("chosen", True), ("rejected", False)):
            key = (r["prompt_id"], r[f"{side}_index"])
            if key in rows and rows[key]["label"] != label:
                conflicted.add(key)
            rows.setdefault(key, {
                "prompt": r["prompt"] if conversational else _text(r["prompt"]),
                "completion": r[side] if conversational else _text(r[side]),
                "label": label, "candidate_index": r[f"{side}_index"], "score": r[f"{side}_score"],
                **{c: r[c] for c in keep}})
    return datasets.Dataset.from_list([v for k, v in rows.items() if k not in conflicted])


def _sft(pairs: datasets.Dataset, conversational: bool) -> datasets.Dataset:
    """The best chosen answer per prompt, as a whole conversation (`messages`), or `prompt`/`completion` text."""
    keep = _provenance(pairs, ("pair_id", "chosen", "rejected", "chosen_index", "rejected_index", "chosen_score",
                               "rejected_score", "margin", "preference", "consistent", "strategy", "prompt"))
    best: dict[str, dict] = {}
    for r in pairs:
        old = best.get(r["prompt_id"])
        if old is None or (r["chosen_score"] or float("-inf")) > (old["chosen_score"] or float("-inf")):
            best[r["prompt_id"]] = r
    rows = []
    for r in best.values():
        base = {"candidate_index": r["chosen_index"], "score": r["chosen_score"], **{c: r[c] for c in keep}}
        if conversational:
            rows.append({"messages": r["prompt"] + r["chosen"], **base})
        else:
            rows.append({"prompt": _text(r["prompt"]), "completion": _text(r["chosen"]), **base})
    return datasets.Dataset.from_list(rows)


EXPORT_RECORD = "rlaif_export.json"


def file_hashes(directory: Path) -> dict[str, dict]:
    """Size and sha256 of every file of a saved export (not the record itself, not datasets' cache files)."""
    return {str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != EXPORT_RECORD and not p.name.startswith("cache-")}


def export_problems(directory: str | Path) -> list[str]:
    """What differs between an export directory and the file hashes its record holds (none recorded: nothing)."""
    directory = Path(directory)
    record_path = directory / EXPORT_RECORD
    if not record_path.exists():
        return []
    try:
        recorded = json.loads(record_path.read_text()).get("files") or {}
    except (ValueError, AttributeError):
        return [f"{record_path}: damaged (not a JSON object)"]
    found = file_hashes(directory)
    problems = [f"{directory / name}: missing" for name in recorded if name not in found]
    for name, facts in recorded.items():
        if name in found and found[name] != facts:
            how = "truncated or overwritten" if found[name]["bytes"] != facts["bytes"] else "sha256 mismatch"
            problems.append(f"{directory / name}: not the file that was written ({how})")
    return problems


def save(data: datasets.DatasetDict, path: str | Path, fmt: str, kind: str, record: dict | None = None) -> Path:
    """Write `data` to `path` in `fmt`, replacing what was there (written beside, then renamed).

    `record` is written into the directory as rlaif_export.json together with the hashes of the files,
    before the rename, so an export and its record always arrive together.
    """
    _check(kind, fmt)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if fmt in ("hf", "trl"):
        if fmt == "trl":
            cols = [c for c in TRAINER_COLUMNS[kind] if c in data["train"].column_names] or None
            data = datasets.DatasetDict({k: v.select_columns(cols or v.column_names) for k, v in data.items()})
        data.save_to_disk(str(tmp))
    else:
        tmp.mkdir(parents=True)
        for split, ds in data.items():
            if fmt == "jsonl":
                ds.to_json(str(tmp / f"{split}.jsonl"), lines=True, force_ascii=False)
            else:
                ds.to_parquet(str(tmp / f"{split}.parquet"))
    if record is not None:
        (tmp / EXPORT_RECORD).write_text(json.dumps({**record, "files": file_hashes(tmp)}, indent=2))
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(path)
    return path


def load_export(path: Path, kind: str) -> datasets.DatasetDict:
    """A saved export (DatasetDict with a `train` split, or a bare Dataset) with the columns `kind` needs."""
    if not path.exists():
        raise InputError(f"{path}: no {kind} export; run `rlaif export` first or pass train.input")
    problems = export_problems(path)
    if problems:
        raise RunError(f"{problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                       + "; rerun `rlaif export RUN` to write the export again")
    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"{path}: not a saved datasets directory ({e})") from None
    if isinstance(data, datasets.Dataset):
        data = datasets.DatasetDict({"train": data})
    if "train" not in data:
        raise InputError(f"{path}: expected a 'train' split, found {list(data)}")
    missing = [c for c in TRAINER_COLUMNS[kind] if c not in data["train"].column_names]
    if missing:
        raise InputError(f"{path}: the {kind} export lacks column(s) {missing}; it has {data['train'].column_names}")
    if len(data["train"]) == 0:
        raise InputError(f"{path}: the train split is empty: nothing to train on")
    return data


EXTRA_COLUMNS = ("prompt_id", "prompt", "chosen", "rejected")


def extra_pairs(spec: str, candidates: datasets.Dataset, like: datasets.Dataset, *, conversational: bool = True,
                exclude_prompts: set[str] = frozenset()) -> datasets.Dataset:
    """The pairs `spec` (module:function) makes from `candidates`, as rows of the export `like`: chosen and rejected
    as the assistant turn, `strategy` naming the function, the judge's columns empty; prompts in
    `exclude_prompts` (the test split's) are left out, so held-out prompts stay held out."""
    made = load_function(spec, "export.extra_pairs")(candidates)
    rows = made.to_list() if isinstance(made, datasets.Dataset) else list(made)
    turn = (lambda text: [{"role": "assistant", "content": text}]) if conversational else (lambda text: text)
    out = []
    for k, r in enumerate(rows):
        missing = [c for c in EXTRA_COLUMNS if r.get(c) is None]
        if missing:
            raise ConfigError(f"field 'export.extra_pairs': {spec} returned row {k} without {', '.join(missing)}; "
                              f"expected rows with {', '.join(EXTRA_COLUMNS)} (chosen and rejected as text)")
        if r["prompt_id"] in exclude_prompts:
            continue
        prompt = to_messages(f"export.extra_pairs: {spec} row {k}", "prompt", r["prompt"])
        out.append({**{c: r.get(c) for c in like.column_names}, "pair_id": f"{r['prompt_id']}/extra-{k}",
                    "prompt": prompt if conversational else _text(prompt), "chosen": turn(r["chosen"]),
                    "rejected": turn(r["rejected"]), "strategy": spec, "review_status": "unreviewed"})
    return datasets.Dataset.from_list(out, features=like.features)


def run_export(cfg: PipelineConfig, run: str, *, iteration: int = 0, reviewed_only: bool = False,
               min_agreement: float | None = None) -> dict:
    """Export `run/iter-K/filter/pairs` into `iter-K/export/<kind>/` (and `export.out`); returns a summary."""
    e: ExportConfig = cfg.export
    source = require_stage(run, "filter", iteration)
    review_gate(cfg, run, iteration, min_agreement=min_agreement, reviewed_only=reviewed_only)
    pairs = apply_review(source.table("pairs"), reviewed_only=reviewed_only)
    seed = cfg.seed if e.split_seed is None else e.split_seed
    data = export(pairs, e.kind, conversational=e.conversational, test_size=e.test_size, seed=seed)
    extra = None
    if e.extra_pairs:
        if e.kind != "preference":
            raise ConfigError(f"field 'export.extra_pairs' applies to export.kind preference, not {e.kind!r}")
        held_out = set(data["test"]["prompt_id"]) if "test" in data else set()
        candidates = require_stage(run, "generate", iteration).table("candidates")
        extra = extra_pairs(e.extra_pairs, candidates, data["train"], conversational=e.conversational,
                            exclude_prompts=held_out)
        data["train"] = datasets.concatenate_datasets([data["train"], extra])
    target = stage_dir(run, "export", iteration) / e.kind
    summary = {"kind": e.kind, "conversational": e.conversational, "pairs read": len(pairs),
               **({f"extra pairs ({e.extra_pairs})": len(extra)} if extra is not None else {}),
               **{f"{split} rows": len(ds) for split, ds in data.items()}, "path": str(target)}
    if e.kind == "unpaired":
        summary["positives / negatives"] = f"{sum(data['train']['label'])} / {len(data['train']) - sum(data['train']['label'])}"
    if e.out:
        summary["copy"] = str(save(data, e.out, e.format, e.kind))
        summary["copy format"] = e.format
    save(data, target, "hf", e.kind, record={**summary, "filter_config_hash": source.manifest.config_hash,
                                             "test_size": e.test_size, "split_seed": seed})
    return summary
