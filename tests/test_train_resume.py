"""A DPO run killed with SIGKILL mid-training resumes from its last checkpoint, not from step 0."""

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import RLAIF, run_cli
from test_train import write_exports

STEPS = 40
ARGS = ["--base", "toy:policy", "--max-steps", str(STEPS), "--batch-size", "8", "-q",
        "--set", "train.save_steps=5", "--set", "train.max_length=32", "--set", "train.logging_steps=1"]


@pytest.mark.slow
def test_kill_9_mid_training_then_resume(tmp_path, toy_paths):
    run = tmp_path / "run"
    write_exports(run, n_train=64, n_test=8)
    work = run / "iter-000" / "train" / "dpo"
    proc = subprocess.Popen([*RLAIF, "train", "dpo", str(run), *ARGS], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline:
        if (work / "checkpoint-10" / "trainer_state.json").exists():
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = sorted(int(p.name.split("-")[1]) for p in work.glob("checkpoint-*"))
    assert saved and max(saved) < STEPS, "the kill must land before the run finishes"
    assert not (run / "iter-000" / "policy").exists(), "no final checkpoint from a killed run"

    resumed = run_cli("train", "dpo", run, *ARGS)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run / "iter-000" / "policy" / "rlaif_train.json").read_text())["summary"]
    assert summary["steps"] == STEPS
    assert summary["resumed_from"].startswith("checkpoint-") and summary["resumed_at_step"] >= 10
    assert summary["resumed_at_step"] % 5 == 0
    history = json.loads((work / "log_history.json").read_text())
    steps = [h["step"] for h in history if "loss" in h]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS, "one log per step: nothing trained twice"
