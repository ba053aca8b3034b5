"""Nothing damaged is read silently: a fault suite over real run directories, real files, real processes.

One small toy run (generate -> judge -> filter -> review -> export) is built once; each test damages a
copy (deletes, truncates or garbles a finished shard, a manifest, the review store or an export) and
checks what the user sees: the stage that wrote the file writes it again identically (same sha256),
and a stage that only reads it stops with one line naming the file and the command that recovers.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_cli
from rlaif.config import load_config
from rlaif.errors import RunError
from rlaif.runs import read_manifest, sha256_file, shard_name, stage_dir
from rlaif.stages.export import run_export
from rlaif.stages.filter import run_filter
from rlaif.stages.generate import run_generate
from rlaif.stages.judge import run_judge
from rlaif.stages.review import simulate_review
from rlaif.stages.export import load_export

SETTINGS = {"generate.model": "toy:policy", "generate.n": 2, "generate.max_new_tokens": 6, "generate.shard_size": 4,
            "judge.kind": "likelihood", "judge.model": "toy:judge", "judge.shard_size": 4,
            "review.sample_size": 6, "review.min_reviewed": 1, "review.min_agreement": 0.0,
            "review.reviewer": "simulated", "review.checker": "rlaif.toy:accuracy_reward"}
TABLES = {"generate": "candidates", "judge": "scores", "filter": "pairs"}


def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # garble: same size, different bytes in the middle
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0x5A for b in data[middle:middle + 64]) + data[middle + 64:])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, toy_test_prompts):
    """A finished small run and the config that made it (copied, never damaged, by each test)."""
    run = tmp_path_factory.mktemp("integrity") / "run"
    cfg = load_config(None, None, {**SETTINGS, "generate.input": str(toy_test_prompts), "generate.limit": 16})
    run_generate(cfg, str(run), progress=False)
    run_judge(cfg, str(run), progress=False)
    run_filter(cfg, str(run), progress=False)
    simulate_review(cfg, str(run))
    run_export(cfg, str(run))
    (run / "pipeline.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    return run, cfg


@pytest.fixture
def copy(reference, tmp_path):
    run, cfg = reference
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target, cfg


RERUN = {"generate": run_generate, "judge": run_judge, "filter": run_filter}
READER = {"generate": run_judge, "judge": run_filter, "filter": lambda cfg, run, **kw: run_export(cfg, run)}


@pytest.mark.parametrize("how", ["delete", "truncate", "garble"])
@pytest.mark.parametrize("stage", ["generate", "judge", "filter"])
def test_damaged_shard_stops_its_reader_and_is_written_again_identically(copy, stage, how):
    run, cfg = copy
    shard = stage_dir(run, stage) / TABLES[stage] / shard_name(1)
    before = sha256_file(shard)
    damage(shard, how)
    # the next stage reads it: one clear error naming the file, never a partial or garbled read
    downstream = stage_dir(run, {"generate": "judge", "judge": "filter", "filter": "export"}[stage])
    shutil.rmtree(downstream)
    with pytest.raises(RunError, match=rf"{shard.name}: .*(missing|bytes|sha256|Parquet|rows).*rerun the {stage} stage"):
        READER[stage](cfg, str(run), progress=False)
    assert not downstream.exists() or read_manifest(downstream) is None or not read_manifest(downstream).shards
    # rerunning the stage that wrote it writes that shard again: the same bytes as before
    RERUN[stage](cfg, str(run), progress=False)
    assert sha256_file(shard) == before
    assert read_manifest(stage_dir(run, stage)).status == "complete"
    READER[stage](cfg, str(run), progress=False)  # and the reader goes on


def test_row_count_edited_in_the_manifest_is_noticed(copy):
    run, cfg = copy
    path = stage_dir(run, "generate") / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"]["00002"]["rows"]["candidates"] += 3
    path.write_text(json.dumps(manifest))
    shutil.rmtree(stage_dir(run, "judge"))
    with pytest.raises(RunError, match=r"part-00002.parquet: holds 8 rows, but the manifest says 11"):
        run_judge(cfg, str(run), progress=False)
    run_generate(cfg, str(run), progress=False)
    assert read_manifest(stage_dir(run, "generate")).shards["00002"].rows["candidates"] == 8


@pytest.mark.parametrize("garbage", ["{not json", '{"stage": "generate"}'])
def test_damaged_manifest_is_one_line_naming_it(copy, garbage):
    run, cfg = copy
    (stage_dir(run, "generate") / "manifest.json").write_text(garbage)
    result = run_cli("judge", run, "-q")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "generate/manifest.json: damaged manifest" in lines[0] and "--overwrite" in lines[0]


@pytest.mark.parametrize("how", ["delete", "truncate", "garble"])
def test_damaged_export_stops_training_and_export_writes_it_again(copy, how):
    run, cfg = copy
    export = stage_dir(run, "export") / "preference"
    arrow = next(export.rglob("*.arrow"))
    before = sha256_file(arrow)
    damage(arrow, how)
    with pytest.raises(RunError, match=rf"{arrow.name}: .*rerun `rlaif export RUN`"):
        load_export(export, "preference")
    run_export(cfg, str(run))
    assert sha256_file(arrow) == before and load_export(export, "preference")["train"].num_rows > 0


def test_damaged_review_store_is_one_line_with_the_recovery(copy):
    run, _ = copy
    store = stage_dir(run, "review") / "review.sqlite"
    damage(store, "garble")
    result = run_cli("review", run, "--stats", "-q")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "review.sqlite: damaged review store" in lines[0] and f"rlaif review {run} --iteration 0" in lines[0]


@pytest.mark.slow
def test_verify_reports_intact_damaged_and_usage_errors(copy, tmp_path):
    run, _ = copy
    ok = run_cli("verify", run)
    assert ok.returncode == 0, ok.stderr
    assert "parts intact" in ok.stderr and "damaged" not in ok.stderr.replace("0 of", "")
    damage(stage_dir(run, "judge") / "scores" / shard_name(0), "garble")
    (stage_dir(run, "filter") / "pairs" / shard_name(2)).unlink()
    bad = run_cli("verify", run)
    assert bad.returncode == 1
    damaged = [line for line in bad.stderr.splitlines() if line.startswith("damaged: ")]
    assert len(damaged) == 2 and any("judge/scores/part-00000.parquet" in d for d in damaged)
    assert any("filter/pairs/part-00002.parquet: missing" in d for d in damaged)
    usage = run_cli("verify", tmp_path / "nothing-here")
    assert usage.returncode == 2 and "not a run directory" in usage.stderr


def test_manifest_without_hashes_still_loads_with_a_warning(copy, caplog):
    run, cfg = copy
    path = stage_dir(run, "generate") / "manifest.json"
    manifest = json.loads(path.read_text())
    for shard in manifest["shards"].values():
        del shard["files"]
    path.write_text(json.dumps(manifest))
    shutil.rmtree(stage_dir(run, "judge"))
    with caplog.at_level("WARNING"):
        run_judge(cfg, str(run), progress=False)
    assert "without shard hashes" in caplog.text
    assert read_manifest(stage_dir(run, "judge")).status == "complete"


def test_litter_of_a_killed_writer_is_removed(copy):
    run, cfg = copy
    litter = stage_dir(run, "filter") / "pairs" / f".{shard_name(0)}.tmp-999999999"
    litter.write_bytes(b"half a shard")
    run_filter(cfg, str(run), progress=False)
    assert not litter.exists()


@pytest.mark.slow
def test_damaged_train_checkpoint_is_one_line_with_the_recovery(tmp_path, toy_paths):
    from test_train import write_exports

    run = tmp_path / "run"
    write_exports(run, n_train=16, n_test=4)
    args = ["--base", "toy:policy", "--max-steps", "4", "--batch-size", "4", "-q", "--set", "train.save_steps=2",
            "--set", "train.max_length=32", "--set", "train.keep_checkpoints=true"]
    assert run_cli("train", "dpo", run, *args).returncode == 0
    ckpt = run / "iter-000" / "train" / "dpo" / "checkpoint-4"
    assert json.loads((ckpt / "rlaif_checksums.json").read_text())  # recorded when it was saved
    shutil.rmtree(run / "iter-000" / "policy")  # as if killed after the last save, before the final one
    weights = next(ckpt.glob("*.safetensors"))
    damage(weights, "garble")
    result = run_cli("train", "dpo", run, *args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{weights}: content differs" in lines[0] and f"delete {ckpt}" in lines[0] and "--overwrite" in lines[0]


# ---------------------------------------------------------------- one writer, a true config record, outages


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_second_command_on_a_stage_exits_at_once_and_a_killed_holder_never_blocks(tmp_path, toy_paths):
    import os
    import signal
    import subprocess
    import time

    from conftest import RLAIF

    run = tmp_path / "run"
    args = ["generate", "-i", "toy:train", "--limit", "2000", "-m", "toy:policy", "--n", "4", "--max-new-tokens", "6",
            "--shard-size", "100", "--out", str(run), "-q"]
    first = subprocess.Popen([*RLAIF, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    holder = stage_dir(run, "generate") / ".lock.holder"
    deadline = time.time() + 300
    while not holder.exists() and time.time() < deadline:
        assert first.poll() is None, first.stderr.read().decode()
        time.sleep(0.05)
    t0 = time.time()
    second = run_cli(*args)
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert f"process {first.pid} (" in lines[0] and "generate" in lines[0] and "is writing this stage" in lines[0]
    assert first.poll() is None, "the first command is still the one writing"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert time.time() - t0 < 120
    resumed = run_cli(*args, "--limit", "200")  # another config: refused for its settings, not for a lock
    assert resumed.returncode == 2 and "generate.limit: 2000 → 200" in resumed.stderr, resumed.stderr


@pytest.mark.slow
def test_the_config_record_never_lies_and_failed_commands_leave_nothing(tmp_path, toy_test_prompts):
    import yaml

    run = tmp_path / "run"
    base = ["generate", "-i", toy_test_prompts, "-m", "toy:policy", "--n", "2", "--max-new-tokens", "4",
            "--shard-size", "20", "--out", run, "-q"]
    assert run_cli(*base).returncode == 0
    recorded = (run / "pipeline.yaml").read_text()
    assert yaml.safe_load(recorded)["generate"]["temperature"] == 1.0
    refused = run_cli(*base, "--temperature", "0.7")
    assert refused.returncode == 2
    assert "generate.temperature: 1.0 → 0.7; finished shards (2 of 2) were made with the old settings" in refused.stderr
    failed = run_cli(*[a if a != "toy:policy" else str(tmp_path / "no-model") for a in base], "--overwrite")
    assert failed.returncode == 2
    assert (run / "pipeline.yaml").read_text() == recorded  # neither the refusal nor the failure rewrote it
    nowhere = tmp_path / "nothing"
    for command in (["judge", nowhere, "--judge", "likelihood", "-m", "toy:judge"], ["filter", nowhere],
                    ["train", "dpo", nowhere, "--base", "toy:policy"],
                    ["generate", "-i", tmp_path / "missing.jsonl", "-m", "toy:policy", "--out", nowhere]):
        result = run_cli(*command, "-q")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert not nowhere.exists(), f"{command[0]} left {nowhere} behind"


def test_rows_failed_in_a_server_outage_are_retried_and_an_all_failed_stage_exits_5(tmp_path, toy_test_prompts):
    import subprocess
    import sys
    from pathlib import Path

    from rlaif.runs import load_table

    port = _free_port()
    run = tmp_path / "run"
    args = ["generate", "--engine", "openai", "--model", "mock", "--base-url", f"http://127.0.0.1:{port}/v1",
            "-i", toy_test_prompts, "--limit", "8", "--n", "2", "--shard-size", "4", "--out", run, "-q",
            "--set", "generate.max_retries=1", "--set", "generate.retry_backoff_s=0.01"]
    down = run_cli(*args)  # nothing listens on the port: every row fails, transiently
    lines = [line for line in down.stderr.splitlines() if line.strip()]
    assert down.returncode == 5 and len(lines) == 1 and "Traceback" not in down.stderr, down.stderr
    assert "16 of 16 rows failed" in lines[0] and "connection error" in lines[0] and "rerun the same command" in lines[0]
    assert read_manifest(stage_dir(run, "generate")).summary["failed"] == 16
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("misbehaving_server.py")),
                               "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        server.stdout.readline()
        kept = run_cli(*args, "--no-retry-failed")  # told not to retry: the failures stand, and still fail it
        assert kept.returncode == 5
        back = run_cli(*args)  # the server is back: the failed rows are generated
        assert back.returncode == 0, back.stderr
    finally:
        server.terminate()
        server.wait(10)
    rows = load_table(stage_dir(run, "generate"), "candidates")
    assert len(rows) == 16 and all(f is None for f in rows["failure"]) and all(t for t in rows["text"])
