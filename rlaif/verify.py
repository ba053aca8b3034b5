"""`rlaif verify RUN`: check a whole run directory against what was written, without changing it.

Every stage manifest must parse, every finished shard must be the file its manifest recorded
(present, same size and sha256, same row count), every review store must pass SQLite's integrity
check, and every export must match the file hashes it recorded. The result is one row per stage
directory; anything damaged is named with the command that recovers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlaif.errors import RlaifError, RunError
from rlaif.review.store import store_problem
from rlaif.runs import MANIFEST, damaged_shards, read_manifest
from rlaif.stages.export import export_problems


@dataclass
class Check:
    """One checked part of a run: where, how much was checked, and what is wrong (empty when intact)."""

    where: str
    checked: str
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_run(run: str | Path) -> list[Check]:
    """All checks of a run directory, in iteration and stage order."""
    run = Path(run)
    if not run.is_dir():
        raise RunError(f"{run}: not a run directory")
    iterations = sorted(p for p in run.glob("iter-*") if p.is_dir())
    if not iterations:
        raise RunError(f"{run}: no iter-*/ directories; expected a run directory written by rlaif")
    checks = []
    for it in iterations:
        for manifest_path in sorted(it.glob(f"*/{MANIFEST}")):
            checks.append(_check_stage(run, manifest_path.parent))
        store = it / "review" / "review.sqlite"
        if store.exists():
            problem = store_problem(store)
            checks.append(Check(str(store.relative_to(run)), "SQLite integrity",
                                [f"{problem}; restore it from a copy"] if problem else []))
        for export in sorted((it / "export").glob("*/")) if (it / "export").is_dir() else []:
            checks.append(_check_export(run, export))
    return checks


def _check_stage(run: Path, directory: Path) -> Check:
    where = str(directory.relative_to(run))
    try:
        manifest = read_manifest(directory)
    except RlaifError as e:
        return Check(where, "manifest", [str(e)])
    damaged = damaged_shards(directory, manifest)
    files = sum(len(r.rows) for r in manifest.shards.values())
    hashed = "sha256" if any(r.files for r in manifest.shards.values()) else "presence and rows only (no hashes)"
    problems = [f"{p}; rerun the {manifest.stage} stage to write it again" for p in damaged.values()]
    return Check(where, f"{files} shard files, {hashed}, {manifest.status}", problems)


def _check_export(run: Path, export: Path) -> Check:
    problems = export_problems(export)
    return Check(str(export.relative_to(run)), "export files",
                 [f"{p}; rerun `rlaif export {run}` to write it again" for p in problems])
