"""Verifiable task sets shipped with rlaif, as prompt sources: `tasks:<task>:<split>` -> a JSONL file.

Each split is written once into `$RLAIF_CACHE/tasks/<version>/<task>-<split>.jsonl`, where the
version is a hash of the rows themselves: a change to a task set lands in a new directory and never
mixes with runs made from the old one. Rows carry the columns their verifier reads, so

    rlaif generate -i tasks:ifeval-lite:train ...
    rlaif judge RUN --judge verifier --verifier rlaif.tasks:verify

work without further setup (docs/tasks.md).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from rlaif import sources
from rlaif.errors import ConfigError
from rlaif.runs import atomic_write_bytes
from rlaif.tasks import ifeval
from rlaif.tasks.edits import edit_pairs
from rlaif.tasks.ifeval import verify

TASKS = {"ifeval-lite": ifeval}

__all__ = ["TASKS", "edit_pairs", "resolve", "verify", "verify_prompted", "write"]


def known_names() -> list[str]:
    return [f"tasks:{task}:{split}" for task, module in TASKS.items() for split in module.SPLITS]


def write(task: str) -> dict[str, Path]:
    """Every split of `task` as JSONL in the cache (written atomically on first use); paths by split."""
    module = TASKS[task]
    texts = {split: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in module.rows(split)).encode()
             for split in module.SPLITS}
    version = hashlib.sha256(b"".join(texts[s] for s in module.SPLITS)).hexdigest()[:12]
    directory = sources.cache_root() / "tasks" / version
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, data in texts.items():
        paths[split] = directory / f"{task}-{split}.jsonl"
        if not paths[split].exists():
            atomic_write_bytes(paths[split], data)
    return paths


def resolve(name: str) -> str:
    """`tasks:ifeval-lite:train` -> the path of that split's JSONL file."""
    _, _, rest = name.partition(":")
    task, _, split = rest.partition(":")
    if task not in TASKS or split not in TASKS[task].SPLITS:
        raise ConfigError(f"{name!r}: unknown task set; expected one of {', '.join(known_names())}")
    return str(write(task)[split])


@functools.cache
def _checks_by_prompt() -> dict[str, tuple[str, str]]:
    """The user turn of every row of every split -> (constraint, constraint_args)."""
    return {row["messages"][-1]["content"]: (row["constraint"], row["constraint_args"])
            for module in TASKS.values() for split in module.SPLITS for row in module.rows(split)}


def verify_prompted(completions: list, prompts: list, **_) -> list[float | None]:
    """`verify`, with each row's constraint looked up from its prompt text: for callers that pass the prompt but
    not the task's columns (the simulated reviewers of the review stage). An unknown prompt is not applicable."""
    checks = [_checks_by_prompt().get(p[-1]["content"] if isinstance(p, list) else p, (None, None)) for p in prompts]
    return verify(completions, [c for c, _ in checks], [a for _, a in checks])
