"""The OpenAI-compatible engine against a real misbehaving HTTP server on 127.0.0.1.

The server (tests/misbehaving_server.py) runs in a subprocess and counts every attempt, so the
retries are asserted on the server's side. The engine against a real vLLM server is tested in
test_engine_parity.py (one vLLM instance at a time).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from conftest import run_cli
from rlaif.engines import GenerationRequest
from rlaif.engines.openai import OpenAIEngine
from rlaif.errors import EngineError
from rlaif.records import CANDIDATE_COLUMNS, SamplingParams
from rlaif.runs import load_table, read_manifest, stage_dir

SERVER = Path(__file__).with_name("misbehaving_server.py")
SECRET = "sk-test-secret-0123456789"


def start_server(*args: str):
    proc = subprocess.Popen([sys.executable, str(SERVER), *args], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/v1"


def stop_server(proc) -> None:
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server():
    proc, url = start_server()
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def keyed_server():
    proc, url = start_server("--require-key", SECRET)
    yield url
    stop_server(proc)


def attempts(url: str) -> dict[str, int]:
    return httpx.get(url.removesuffix("/v1") + "/stats").json()["attempts"]


def engine(url: str, **kw) -> OpenAIEngine:
    return OpenAIEngine("mock", base_url=url, **{"timeout_s": 1.0, "max_retries": 3, "retry_backoff_s": 0.01, **kw})


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


FAULTS = {  # prompt -> attempts the server must see (max_retries=3: at most 4)
    "ok-1": 1, "ok-2": 1, "ok-3": 1,
    "#fault=429:2": 3, "#fault=500:1": 2, "#fault=close:1": 2, "#fault=stall:1": 2, "#fault=badjson:2": 3,
    "#fault=500": 4,  # never recovers: recorded as failed after 4 attempts
    "#fault=400": 1,  # the request's own fault: not retried
}
FAILED = {"#fault=500", "#fault=400"}


@pytest.mark.slow
def test_faults_through_cli_retried_recorded_and_resumed(keyed_server, tmp_path):
    tag = "cli"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"{tag} {p}"}) + "\n"
                               for i, p in enumerate(FAULTS)))
    run = tmp_path / "run"
    args = ["generate", "--engine", "openai", "--model", "mock", "--base-url", keyed_server, "--api-key-env",
            "RLAIF_TEST_KEY", "--input", prompts, "--out", run, "--n", "2", "--shard-size", "4",
            "--set", "generate.timeout_s=1", "--set", "generate.max_retries=3",
            "--set", "generate.retry_backoff_s=0.01", "--set", "generate.max_concurrency=4"]
    env = {**_env(), "RLAIF_TEST_KEY": SECRET}
    res = run_cli(*args, env=env)
    assert res.returncode == 0, res.stderr
    seen = attempts(keyed_server)
    assert {p: seen[f"{tag} {p}"] for p in FAULTS} == FAULTS

    out = load_table(stage_dir(run, "generate"), "candidates")
    assert set(CANDIDATE_COLUMNS) <= set(out.column_names)
    keys = Counter(zip(out["prompt_id"], out["candidate_index"]))
    assert len(out) == 2 * len(FAULTS) and set(keys.values()) == {1}  # none lost, none duplicated
    failed = {r["prompt"][-1]["content"].removeprefix(f"{tag} ") for r in out if r["failure"]}
    assert failed == FAILED
    for r in out:
        if r["failure"]:
            assert r["finish_reason"] == "error" and r["text"] == "" and r["num_tokens"] == 0
        else:
            assert r["text"].startswith("answer") and r["num_tokens"] == 2 and r["logprob_sum"] == -1.0
    why = {r["prompt"][-1]["content"]: r["failure"] for r in out if r["failure"]}
    assert "after 4 attempts" in why[f"{tag} #fault=500"] and "HTTP 500" in why[f"{tag} #fault=500"]
    assert "HTTP 400" in why[f"{tag} #fault=400"] and "attempts" not in why[f"{tag} #fault=400"]
    manifest = read_manifest(stage_dir(run, "generate"))
    assert manifest.summary["failed"] == 4 and manifest.summary["candidates"] == 20

    # the key is used but written nowhere
    written = (run / "pipeline.yaml").read_text() + (stage_dir(run, "generate") / "manifest.json").read_text()
    assert SECRET not in written + res.stderr + res.stdout
    assert "RLAIF_TEST_KEY" in written

    # resume without retrying failed rows: everything is done, no request goes out
    again = run_cli(*args, "--no-retry-failed", env=env)
    assert again.returncode == 0, again.stderr
    assert attempts(keyed_server) == seen
    # a plain rerun writes again the shard whose row failed transiently (the 500); the rows that succeeded are
    # answered from the call ledger, so only the failed requests go out again, and they come out the same
    before = out.to_list()
    again = run_cli(*args, env=env)
    assert again.returncode == 0, again.stderr
    more = {p: n - seen[p] for p, n in attempts(keyed_server).items() if n != seen.get(p)}
    assert more == {f"{tag} #fault=500": 4, f"{tag} #fault=400": 1}, more
    assert load_table(stage_dir(run, "generate"), "candidates").to_list() == before


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}


def test_bad_key_fails_fast_names_the_variable_and_hides_the_key(keyed_server, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "badkey 1"}) + "\n")
    wrong = "sk-wrong-" + "7" * 20
    res = run_cli("generate", "--engine", "openai", "--model", "mock", "--base-url", keyed_server, "--input",
                  prompts, "--out", tmp_path / "run", "--api-key-env", "MY_KEY", env={**_env(), "MY_KEY": wrong})
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and res.stderr.count("error:") == 1
    assert "401" in res.stderr and "MY_KEY" in res.stderr
    assert wrong not in res.stderr and "***" in res.stderr  # the server echoed it; we scrubbed it
    assert attempts(keyed_server)["badkey 1"] == 1  # 401 is not retried

    unset = run_cli("generate", "--engine", "openai", "--model", "mock", "--base-url", keyed_server, "--input",
                    prompts, "--out", tmp_path / "run2", "--api-key-env", "NOT_SET_ANYWHERE", env=_env())
    assert unset.returncode == 2 and "NOT_SET_ANYWHERE is not set" in unset.stderr


def test_wrong_model_and_wrong_url_fail_fast(server):
    with pytest.raises(EngineError, match="check the model name \\('gpt-nope'"):
        OpenAIEngine("gpt-nope", base_url=server).generate([GenerationRequest(chat("wrong model"), SamplingParams())])
    assert attempts(server)["wrong model"] == 1
    with pytest.raises(EngineError, match="base URL"):
        OpenAIEngine("mock", base_url=server.removesuffix("/v1") + "/api").generate(
            [GenerationRequest(chat("wrong url"), SamplingParams())])


def test_n_fallback_when_server_ignores_n(server, caplog):
    e = engine(server)
    reqs = [GenerationRequest(chat(f"nfallback {i} #fault=n1"), SamplingParams(n=3, max_new_tokens=5), seed=1)
            for i in range(2)]
    with caplog.at_level(logging.WARNING, logger="rlaif.engines.openai"):
        results = e.generate(reqs)
    assert [len(r.completions) for r in results] == [3, 3]
    # the extra samples are separate requests with their own seeds
    assert len({c.text for c in results[0].completions}) == 3
    assert attempts(server)["nfallback 0 #fault=n1"] == 3
    assert sum("no support for n" in r.message for r in caplog.records) == 1  # said once


def test_greedy_asks_once_and_text_prompts_use_completions(server):
    e = engine(server)
    [greedy, text] = e.generate([GenerationRequest(chat("greedy once"), SamplingParams(n=4, temperature=0)),
                                 GenerationRequest("plain text prompt", SamplingParams(n=2))])
    assert len(greedy.completions) == 4 and len({c.text for c in greedy.completions}) == 1
    assert attempts(server)["greedy once"] == 1
    assert len(text.completions) == 2 and text.completions[0].logprob_sum == -1.0


def test_next_token_logprobs_and_missing_logprobs_error(server):
    e = engine(server)
    [d_chat, d_text] = e.next_token_logprobs([chat("ntl a"), "ntl b"], tokens=["1", "2", "3"])
    for d in (d_chat, d_text):
        assert d["1"] == pytest.approx(-0.1) and d["2"] == pytest.approx(-2.4) and d["3"] == float("-inf")
    assert e.next_token_logprobs([chat("ntl c")], top_k=1) == [{"1": pytest.approx(-0.1)}]
    with pytest.raises(EngineError, match=r"returned no log-probs.*text-parsing judge") as err:
        e.next_token_logprobs([chat("ntl d #fault=nologprobs")], tokens=["1"])
    assert server in str(err.value)
    # generation still works without log-probs: tokens come from usage, no log-prob sum
    [r] = e.generate([GenerationRequest(chat("gen d #fault=nologprobs"), SamplingParams(n=2))])
    assert [c.num_tokens for c in r.completions] == [2, 2] and r.completions[0].logprob_sum is None
    with pytest.raises(EngineError, match=r"cannot score continuations.*text-parsing judge"):
        e.score([chat("score me")], ["1"])


def test_rate_limit_spaces_requests(server):
    e = engine(server, requests_per_minute=600, max_concurrency=8)  # one request per 0.1 s
    before = len(httpx.get(server.removesuffix("/v1") + "/stats").json()["times"])
    e.generate([GenerationRequest(chat(f"limited {i}"), SamplingParams(n=1)) for i in range(6)])
    stamps = httpx.get(server.removesuffix("/v1") + "/stats").json()["times"][before:]
    assert len(stamps) == 6
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    # unlimited, 8 concurrent requests would arrive together; paced, 5 gaps of 0.1 s (each one a little
    # early or late on a busy machine, as connections open: the span and the median are what pacing fixes)
    assert stamps[-1] - stamps[0] > 0.45 and gaps[2] > 0.08, gaps


def test_retry_after_header_wins_over_backoff(server):
    e = engine(server, retry_backoff_s=30)  # our own backoff would wait up to 30 s
    t0 = time.perf_counter()
    [r] = e.generate([GenerationRequest(chat("retry-after #fault=429:2"), SamplingParams(n=1))])
    assert r.failure is None and attempts(server)["retry-after #fault=429:2"] == 3
    assert time.perf_counter() - t0 < 10  # Retry-After: 0 was honoured
    assert e.retries == 2
