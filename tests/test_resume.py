"""kill -9 mid-run loses at most the shard in flight; a rerun resumes and equals an uninterrupted run."""

import os
import signal
import subprocess
import time

import pytest

from conftest import RLAIF, run_cli
from rlaif.runs import load_table, read_manifest, stage_dir

ARGS = ["--model", "toy:policy", "--n", "4", "--max-new-tokens", "6", "--shard-size", "8", "--seed", "5", "-q"]


def _input(tmp_path, toy_paths, k=320):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(toy_paths["prompts-train"].read_text().splitlines()[:k]) + "\n")
    return path


def _rows(run):
    t = load_table(stage_dir(run, "generate"), "candidates")
    return sorted(zip(t["prompt_id"], t["candidate_index"], t["text"], t["seed"]))


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path, toy_paths):
    prompts = _input(tmp_path, toy_paths)
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    proc = subprocess.Popen([*RLAIF, "generate", "--input", str(prompts), "--out", str(killed), *ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    directory = stage_dir(killed, "generate")
    deadline = time.time() + 240
    while time.time() < deadline:
        manifest = read_manifest(directory) if (directory / "manifest.json").exists() else None
        if manifest and len(manifest.shards) >= 3:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = read_manifest(directory)
    assert 3 <= len(at_kill.shards) < at_kill.num_shards == 40, "the kill must land while shards remain unfinished"
    assert at_kill.status == "running"

    resumed = run_cli("generate", "--input", prompts, "--out", killed, *ARGS)
    assert resumed.returncode == 0, resumed.stderr
    after = read_manifest(directory)
    assert after.status == "complete" and len(after.shards) == 40
    # finished shards were not redone
    for key, shard in at_kill.shards.items():
        assert after.shards[key].seconds == shard.seconds

    ok = run_cli("generate", "--input", prompts, "--out", reference, *ARGS)
    assert ok.returncode == 0, ok.stderr
    rows = _rows(killed)
    assert len(rows) == 320 * 4
    assert len({(r[0], r[1]) for r in rows}) == 320 * 4  # nothing lost, nothing duplicated
    assert rows == _rows(reference)


@pytest.mark.slow
def test_changed_config_is_refused_then_overwrite(tmp_path, toy_paths):
    prompts = _input(tmp_path, toy_paths, k=16)
    run = tmp_path / "run"
    assert run_cli("generate", "--input", prompts, "--out", run, *ARGS).returncode == 0
    changed = run_cli("generate", "--input", prompts, "--out", run, *ARGS, "--temperature", "0.5")
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert "generate.temperature: 1.0 → 0.5; finished shards (2 of 2) were made with the old settings" in changed.stderr
    assert "--overwrite" in changed.stderr and "--out for a new run" in changed.stderr
    prompts.write_text(prompts.read_text().replace("What is", "What's"))
    other_input = run_cli("generate", "--input", prompts, "--out", run, *ARGS)
    assert other_input.returncode == 2 and "the input changed" in other_input.stderr
    fresh = run_cli("generate", "--input", prompts, "--out", run, *ARGS, "--overwrite")
    assert fresh.returncode == 0, fresh.stderr
    assert all(p.startswith("add-") for p, *_ in _rows(run))
    assert read_manifest(stage_dir(run, "generate")).status == "complete"
