"""The call ledger against a real OpenAI-compatible server on 127.0.0.1 that logs every request it answers.

The server is tests/misbehaving_server.py; `GET /stats` gives its log (prompt, seed, n of every
answered request) and its per-prompt attempt counts, so what was sent twice is read on the
server's side. The kill -9 test kills a real `rlaif generate` subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from conftest import RLAIF, run_cli
from rlaif.engines import GenerationRequest
from rlaif.engines.ledger import LEDGER_FILE, CallLedger
from rlaif.engines.openai import OpenAIEngine
from rlaif.records import SamplingParams
from rlaif.runs import load_table, read_manifest, stage_dir
from test_engine_openai import SECRET, chat, start_server, stop_server


@pytest.fixture(scope="module")
def slow_server():
    proc, url = start_server("--delay", "0.15")
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def server():
    proc, url = start_server("--require-key", SECRET)
    yield url
    stop_server(proc)


def clean_env() -> dict:
    """This environment without an OpenAI key or base URL of its own."""
    return {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}


def stats(url: str) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/stats").json()


def engine(url: str, ledger: CallLedger | None, **kw) -> OpenAIEngine:
    os.environ["RLAIF_LEDGER_TEST_KEY"] = SECRET
    return OpenAIEngine("mock", base_url=url, ledger=ledger, api_key_env="RLAIF_LEDGER_TEST_KEY",
                        **{"timeout_s": 2.0, "max_retries": 2, "retry_backoff_s": 0.01, **kw})


def ledger_seeds(path: Path) -> set[int]:
    """The request seeds whose answers the ledger holds (read as another process would)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        try:
            return {json.loads(f)["seed"] for (f,) in db.execute("SELECT fields FROM calls")}
        except sqlite3.OperationalError:  # created, its tables not yet
            return set()


def write_prompts(path: Path, tag: str, count: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"{tag} {i}"}) + "\n" for i in range(count)))
    return path


@pytest.mark.slow
def test_kill_minus_nine_mid_run_resends_no_completed_request(slow_server, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", "kill", 24)
    job = ["generate", "--engine", "openai", "--model", "mock", "--base-url", slow_server, "--input", prompts,
           "--n", "2", "--shard-size", "4", "--quiet", "--set", "generate.max_concurrency=2"]
    run = tmp_path / "run"
    proc = subprocess.Popen([*RLAIF, *job, "--out", run], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=clean_env(), start_new_session=True)
    deadline = time.monotonic() + 120
    while True:  # kill once some requests are ledgered and the stage is not finished
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the run never ledgered 3 requests"
        if (run / LEDGER_FILE).exists() and len(ledger_seeds(run / LEDGER_FILE)) >= 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    completed = ledger_seeds(run / LEDGER_FILE)
    manifest = read_manifest(stage_dir(run, "generate"))
    assert manifest is None or manifest.status != "complete"
    assert len(completed) < 24
    finished = manifest.finished() if manifest else set()
    reread = {s for s in completed if s // 1_000_003 not in finished}  # shard i's seeds: i * 1_000_003 + row
    time.sleep(0.5)  # requests the server was still answering when the client died
    sent_before = len(stats(slow_server)["answered"])

    res = run_cli(*job, "--out", run, env=clean_env())
    assert res.returncode == 0, res.stderr
    resent = [r for r in stats(slow_server)["answered"][sent_before:] if r["prompt"].startswith("kill ")]
    assert not {r["seed"] for r in resent} & completed  # zero completed requests sent twice
    assert len(resent) == 24 - len(completed)  # and each missing one exactly once
    summary = read_manifest(stage_dir(run, "generate")).summary
    assert summary["api.mock.answers"] == 48 and summary["api.mock.ledger_hits"] == 2 * len(reread)

    clean = tmp_path / "clean"
    assert run_cli(*job, "--out", clean, env=clean_env()).returncode == 0
    assert load_table(stage_dir(run, "generate"), "candidates").to_list() == \
        load_table(stage_dir(clean, "generate"), "candidates").to_list()


def test_samples_are_keys_so_raising_n_and_adding_prompts_reuse_answers(server, tmp_path):
    ledger = CallLedger(tmp_path / LEDGER_FILE)
    e = engine(server, ledger)
    params = SamplingParams(n=2, max_new_tokens=5)
    first = e.generate([GenerationRequest(chat(f"reuse {i}"), params, seed=7) for i in range(3)])
    before = len(stats(server)["answered"])
    more = e.generate([GenerationRequest(chat(f"reuse {i}"), params.model_copy(update={"n": 4}), seed=7)
                       for i in range(4)])
    sent = stats(server)["answered"][before:]
    # the three old rows ask only for samples 2-3 (one request each); the new prompt asks for all four
    assert sorted((r["prompt"], r["n"]) for r in sent) == [("reuse 0", 2), ("reuse 1", 2), ("reuse 2", 2),
                                                           ("reuse 3", 4)]
    for old, new in zip(first, more):
        assert [c.text for c in new.completions[:2]] == [c.text for c in old.completions]
        assert len({c.text for c in new.completions}) == 4  # four distinct samples
    # greedy asks once, whatever n
    e.generate([GenerationRequest(chat("reuse greedy"), SamplingParams(n=3, temperature=0))])
    again = e.generate([GenerationRequest(chat("reuse greedy"), SamplingParams(n=5, temperature=0))])
    assert stats(server)["attempts"]["reuse greedy"] == 1 and len(again[0].completions) == 5


def test_a_server_that_ignores_n_fills_the_same_keys(server, tmp_path):
    ledger = CallLedger(tmp_path / LEDGER_FILE)
    reqs = [GenerationRequest(chat(f"ignores-n {i} #fault=n1"), SamplingParams(n=3, max_new_tokens=5), seed=2)
            for i in range(2)]
    first = engine(server, ledger).generate(reqs)
    seen = stats(server)["attempts"]
    assert [seen[f"ignores-n {i} #fault=n1"] for i in range(2)] == [3, 3]
    assert all(len({c.text for c in r.completions}) == 3 for r in first)
    again = engine(server, CallLedger(tmp_path / LEDGER_FILE)).generate(reqs)  # a fresh process, same ledger
    assert stats(server)["attempts"] == seen
    assert [[c.text for c in r.completions] for r in again] == [[c.text for c in r.completions] for r in first]


def test_only_completed_answers_are_ledgered_never_failures_nor_the_key(server, tmp_path):
    path = tmp_path / LEDGER_FILE
    reqs = [GenerationRequest(chat(text), SamplingParams(n=2, max_new_tokens=5), seed=3)
            for text in ("only ok", "only #fault=429:1", "only #fault=500", "only #fault=400")]
    results = engine(server, CallLedger(path)).generate(reqs)
    assert [r.failure is None for r in results] == [True, True, False, False]
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 4  # 2 rows x 2 samples, no failure
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(LEDGER_FILE))
    assert SECRET.encode() not in data and b"Bearer" not in data
    # a rerun sends only the requests that failed (what a rerun of failed rows relies on)
    seen = stats(server)["attempts"]
    engine(server, CallLedger(path)).generate(reqs)
    after = stats(server)["attempts"]
    assert {t: after[t] - seen.get(t, 0) for t in after if after[t] != seen.get(t, 0)} == \
        {"only #fault=500": 3, "only #fault=400": 1}


@pytest.mark.slow
def test_judge_calls_go_through_the_ledger_and_explain_names_the_broken_field(server, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", "explain", 3)
    run = tmp_path / "run"
    pricing = tmp_path / "pipeline.yaml"
    pricing.write_text("pricing:\n  mock: {input_per_mtok: 2.0, output_per_mtok: 8.0}\n")
    env = {**clean_env(), "RLAIF_LEDGER_TEST_KEY": SECRET}
    gen = ["generate", "--config", pricing, "--engine", "openai", "--model", "mock", "--base-url", server,
           "--api-key-env", "RLAIF_LEDGER_TEST_KEY", "--input", prompts, "--n", "2", "--out", run, "--quiet"]
    assert run_cli(*gen, "--max-new-tokens", "8", env=env).returncode == 0
    judge = ["judge", run, "--judge", "pairwise", "--engine", "openai", "--model", "mock", "--quiet",
             "--set", f"judge.base_url={server}", "--set", "judge.api_key_env=RLAIF_LEDGER_TEST_KEY"]
    assert run_cli(*judge, env=env).returncode == 0
    judged = load_table(stage_dir(run, "judge"), "comparisons").to_list()
    summary = read_manifest(stage_dir(run, "judge")).summary
    assert summary["api.mock.answers"] == 6  # 3 prompts x 1 pair x 2 orders
    # the judge stage's output is lost, not its ledger: judging again sends nothing and gives the same verdicts
    import shutil

    shutil.rmtree(stage_dir(run, "judge"))
    seen = stats(server)["attempts"]
    assert run_cli(*judge, env=env).returncode == 0
    assert stats(server)["attempts"] == seen
    assert load_table(stage_dir(run, "judge"), "comparisons").to_list() == judged
    assert read_manifest(stage_dir(run, "judge")).summary["api.mock.ledger_hits"] == 6

    gen_summary = read_manifest(stage_dir(run, "generate")).summary
    with closing(sqlite3.connect(run / LEDGER_FILE)) as db:
        p, c = db.execute("SELECT SUM(prompt_tokens), SUM(completion_tokens) FROM calls WHERE stage = 'generate'"
                          ).fetchone()
    assert gen_summary["api.mock.prompt_tokens"] == p > 0 and gen_summary["api.mock.completion_tokens"] == c > 0
    assert gen_summary["cost_usd"] == pytest.approx((2.0 * p + 8.0 * c) / 1e6, abs=1e-6)  # rounded to 1e-6

    # raising n (which needs --overwrite) pays only for the new samples; a copy of the ledger is kept beside
    seen = stats(server)["attempts"]
    res = run_cli(*[a if a != "2" else "3" for a in gen], "--max-new-tokens", "8", "--overwrite", env=env)
    assert res.returncode == 0, res.stderr
    assert sum(stats(server)["attempts"].values()) - sum(seen.values()) == 3  # one new sample for each of 3 prompts
    assert read_manifest(stage_dir(run, "generate")).summary["api.mock.ledger_hits"] == 6
    kept = sorted(run.glob("ledger-*.sqlite"))
    assert len(kept) == 1
    with closing(sqlite3.connect(kept[0])) as db:
        assert db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 12  # 6 generate + 6 judge answers
    # a changed max_tokens pays again, and --explain names the field
    res = run_cli(*gen, "--max-new-tokens", "16", "--overwrite", env=env)
    assert res.returncode == 0, res.stderr
    report = run_cli("ledger", run, "--explain")
    assert report.returncode == 0, report.stderr
    assert "generate iteration 0, last run: 6 answers were not in the ledger; 0 of them new work" in report.stdout
    assert "6 differ from answers in this ledger in max_tokens (e.g. max_tokens: 8 -> 16)" in report.stdout
    assert "generate" in report.stderr and "mock" in report.stderr  # the table (rich prints on stderr)


def test_ledger_command_without_a_ledger_is_one_clear_line(tmp_path):
    res = run_cli("ledger", tmp_path)
    assert res.returncode == 2 and res.stderr.count("error:") == 1 and "no ledger" in res.stderr
    assert "Traceback" not in res.stderr


def test_report_lists_api_usage_and_cost_per_stage_and_model():
    from rlaif.report import api_rows, render

    state = {"iterations": [{"iteration": 0, "stages": {
        "generate": {"summary": {"candidates": 8, "api.gpt-4.1-mini.answers": 8, "api.gpt-4.1-mini.ledger_hits": 2,
                                 "api.gpt-4.1-mini.prompt_tokens": 120, "api.gpt-4.1-mini.completion_tokens": 64,
                                 "api.gpt-4.1-mini.batch_answers": 8, "api.gpt-4.1-mini.cost_usd": 0.0123}},
        "judge": {"summary": {"scored": 8}}}}]}
    assert api_rows(state) == [[0, "generate", "gpt-4.1-mini", 8, 2, 120, 64, 8, "0.0123"]]
    from rlaif.loop import LoopState

    page = render(Path("runs/x"), {**LoopState(name="x", status="complete").__dict__, **state})
    assert "API usage and cost" in page and "gpt-4.1-mini" in page
    assert "API usage and cost" not in render(Path("runs/x"), LoopState(name="x", status="complete").__dict__)
