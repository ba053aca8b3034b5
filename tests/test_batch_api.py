"""Batch mode (`generate.batch: true`) against a real Batch-API-speaking server on 127.0.0.1.

The server (tests/batch_server.py) follows OpenAI's documented protocol: file upload, batch
creation, polling, output and error files. It completes requests, expires some, fails others,
and reports every submission, so exactly-once resubmission is counted on the server's side.
The driver is a real `rlaif generate` subprocess, killed with SIGKILL mid-batch.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from conftest import RLAIF, run_cli
from rlaif.engines.ledger import LEDGER_FILE
from rlaif.runs import load_table, read_manifest, stage_dir
from test_ledger import clean_env

SERVER = Path(__file__).with_name("batch_server.py")
FAULTS = {3: "#batch=error:1", 5: "#batch=expire:1", 7: "#batch=error:2", 9: "#batch=expire:2"}
FINAL = {7, 9}  # failed in both submissions: row failures


def start(*args: str):
    proc = subprocess.Popen([sys.executable, str(SERVER), *args], stdout=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}/v1"


def stats(url: str) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/stats").json()


def job(tmp_path: Path, url: str, count: int, faults: dict[int, str]) -> tuple[list, Path]:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"batch {i} {faults.get(i, '')}".strip()}) + "\n"
                               for i in range(count)))
    config = tmp_path / "pipeline.yaml"
    config.write_text("pricing:\n  mock: {input_per_mtok: 1.0, output_per_mtok: 4.0, batch_discount: 0.5}\n"
                      "generate:\n  batch: true\n  batch_poll_s: 0.1\n  batch_poll_max_s: 0.3\n")
    run = tmp_path / "run"
    return ["generate", "--config", config, "--engine", "openai", "--model", "mock", "--base-url", url, "--input",
            prompts, "--n", "2", "--shard-size", "4", "--out", run, "--quiet"], run


def batches_in_ledger(run: Path) -> list[tuple]:
    path = run / LEDGER_FILE
    if not path.exists():
        return []
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        try:
            return db.execute("SELECT intent, batch_id, input_file_id, collected FROM batches").fetchall()
        except sqlite3.OperationalError:
            return []


def kill_when(proc, ready, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_batch_life_cycle_killed_driver_reattaches_and_resubmits_failures_once(tmp_path):
    server, url = start("--rate", "6")
    try:
        args, run = job(tmp_path, url, 12, FAULTS)
        driver = subprocess.Popen([*RLAIF, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env(),
                                  start_new_session=True)

        def mid_batch():
            b = stats(url)["batches"]
            return bool(b) and b[0]["request_counts"]["completed"] >= 3 and b[0]["status"] == "in_progress" and \
                any(row[1] == b[0]["id"] for row in batches_in_ledger(run))

        kill_when(driver, mid_batch, "the first batch in progress and recorded")
        [(_, first_id, file_id, collected)] = batches_in_ledger(run)
        assert file_id and not collected

        res = run_cli(*args, env=clean_env())
        assert res.returncode == 0, res.stderr
        seen = stats(url)
        assert [b["id"] for b in seen["batches"]][0] == first_id  # re-attached: no second first batch
        assert len(seen["batches"]) == 2 and seen["sync_requests"] == 0
        first, follow_up = (set(b["custom_ids"]) for b in seen["batches"])
        assert len(first) == 12 and len(follow_up) == len(FAULTS) and follow_up < first
        assert {p: n for p, n in seen["prompt_submissions"].items() if n != 1} == \
            {f"batch {i} {f}": 2 for i, f in FAULTS.items()}  # each failed or expired request resubmitted once
        assert seen["batches"][0]["status"] == "expired"

        out = load_table(stage_dir(run, "generate"), "candidates")
        assert len(out) == 24 and sorted(set(out["prompt_id"])) == sorted(f"p{i}" for i in range(12))
        failed = {r["prompt_id"]: r["failure"] for r in out if r["failure"]}
        assert set(failed) == {f"p{i}" for i in FINAL}
        assert "failed 2 times" in failed["p7"] and "HTTP 500" in failed["p7"]
        assert failed["p9"].count("batch_expired") == 2
        for r in out:
            if not r["failure"]:
                assert r["text"] == f"answer {r['candidate_index']} seed {r['seed'] * 1_000_003 + int(r['prompt_id'][1:]) % 4}"

        summary = read_manifest(stage_dir(run, "generate")).summary
        assert summary["api.mock.batch_answers"] == summary["api.mock.answers"] == 20
        p, c = summary["api.mock.prompt_tokens"], summary["api.mock.completion_tokens"]
        assert p > 0 and c == 40
        assert summary["cost_usd"] == pytest.approx(0.5 * (1.0 * p + 4.0 * c) / 1e6, abs=1e-6)  # rounded to 1e-6

        again = run_cli(*args, env=clean_env())  # finished: nothing is sent, no batch is made
        assert again.returncode == 0 and stats(url)["batches"] == seen["batches"]
        report = run_cli("ledger", run)
        assert report.returncode == 0 and first_id in report.stderr and "expired" in report.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_driver_killed_before_it_learned_the_batch_id_finds_its_batch(tmp_path):
    server, url = start("--rate", "50", "--create-delay", "3")
    try:
        args, run = job(tmp_path, url, 4, {})
        driver = subprocess.Popen([*RLAIF, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env(),
                                  start_new_session=True)
        kill_when(driver, lambda: bool(stats(url)["batches"]), "the batch created")
        [(intent, batch_id, file_id, _)] = batches_in_ledger(run)
        assert batch_id is None and file_id  # created on the server, never recorded here
        res = run_cli(*args, env=clean_env())
        assert res.returncode == 0, res.stderr
        seen = stats(url)
        assert len(seen["batches"]) == 1 and seen["batch_lists"] >= 1  # found through its metadata
        assert seen["batches"][0]["metadata"] == {"rlaif_intent": intent}
        assert set(seen["prompt_submissions"].values()) == {1}
        out = load_table(stage_dir(run, "generate"), "candidates")
        assert len(out) == 8 and all(f is None for f in out["failure"])
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_batch_needs_the_openai_engine(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "x"}) + "\n")
    res = run_cli("generate", "--engine", "transformers", "--model", "toy:policy", "--input", prompts, "--out",
                  tmp_path / "run", "--set", "generate.batch=true")
    assert res.returncode == 2 and "generate.batch" in res.stderr and "openai" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_server_without_the_batch_api_is_one_clear_error(tmp_path):
    from test_engine_openai import start_server, stop_server

    proc, url = start_server()  # an OpenAI-compatible server that has no /v1/files
    try:
        args, run = job(tmp_path, url, 2, {})
        res = run_cli(*args, env=clean_env())
        assert res.returncode == 2 and res.stderr.count("error:") == 1 and "Traceback" not in res.stderr
        assert "does not speak the Batch API" in res.stderr and "generate.batch" in res.stderr
    finally:
        stop_server(proc)
