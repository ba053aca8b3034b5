"""Parity: the same generate job on every engine gives the same schema, rows and accounting.

With greedy decoding the toy policy in float32 gives the same text on transformers, vLLM (offline)
and the OpenAI engine over a real `vllm serve`-style server. One vLLM instance runs at a time:
the CLI's offline vLLM run ends (and is checked to leave no process behind) before the server
starts; the server is shared by this module's tests and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import httpx
import psutil
import pytest

from conftest import RLAIF
from rlaif.engines.openai import OpenAIEngine
from rlaif.records import CANDIDATE_COLUMNS
from rlaif.runs import load_table, read_manifest, stage_dir

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

VLLM_FLAGS = ["--set", "generate.dtype=float32", "--set", "generate.max_model_len=128",
              "--set", "generate.enforce_eager=true", "--set", "generate.gpu_memory_utilization=0.3"]
JOB = ["--model", "toy:policy", "--n", "2", "--temperature", "0", "--max-new-tokens", "8", "--shard-size", "4",
       "--quiet"]
LOGPROB_TOLERANCE = 2e-3  # float32 on different kernels: differences are ~1e-5 here; leave room for other CPUs
TOP_K = 5  # next-token log-probs are compared on the tokens both engines rank in their top 5


def marked_processes(mark: str) -> list[psutil.Process]:
    """Live processes whose environment carries `mark` (what a CLI run and its children inherit)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("RLAIF_TEST_MARK") == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def run_generate_cli(*args, env=None, watch: bool = False) -> tuple[subprocess.CompletedProcess, set[int]]:
    """Run `rlaif generate` and, when watching, collect the PIDs of every process it started."""
    mark = uuid.uuid4().hex
    proc = subprocess.Popen([*RLAIF, "generate", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**(env or os.environ), "RLAIF_TEST_MARK": mark})
    seen: set[int] = set()
    if watch:
        while proc.poll() is None:
            seen |= {p.pid for p in marked_processes(mark)} - {proc.pid}
            time.sleep(0.5)
    out, err = proc.communicate(timeout=600)
    leftovers = marked_processes(mark) if watch else []
    assert not leftovers, f"processes left behind: {[(p.pid, p.name()) for p in leftovers]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), seen


@pytest.fixture(scope="module")
def parity_input(toy_paths, tmp_path_factory):
    path = tmp_path_factory.mktemp("parity") / "prompts.jsonl"
    lines = toy_paths["prompts-test"].read_text().splitlines()[:6]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def local_runs(parity_input, tmp_path_factory):
    """The job through the CLI on transformers, then on offline vLLM (watched for leftover processes)."""
    root = tmp_path_factory.mktemp("runs")
    res, _ = run_generate_cli("--engine", "transformers", "--set", "generate.dtype=float32", *JOB,
                              "--input", parity_input, "--out", root / "transformers")
    assert res.returncode == 0, res.stderr
    res, spawned = run_generate_cli("--engine", "vllm", *VLLM_FLAGS, *JOB, "--input", parity_input,
                                    "--out", root / "vllm", watch=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return {"root": root, "vllm_spawned": spawned}


@contextlib.contextmanager
def serve_vllm(model: str, *flags: str, timeout_s: float = 300):
    """A real vLLM OpenAI-compatible server of `model` on 127.0.0.1; yields its /v1 URL, stops it by its PID."""
    port = _free_port()
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty server never blocks on a full pipe
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
         "--port", str(port), "--enforce-eager", "--gpu-memory-utilization", "0.3", *flags],
        stdout=subprocess.DEVNULL, stderr=log, text=True, start_new_session=True,
        env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"})
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"vLLM server exited with {proc.returncode}: {log.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server did not answer /v1/models within {timeout_s:.0f} s")
            time.sleep(1)
        yield url
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its engine process, should it outlive the server
        except ProcessLookupError:
            pass
        log.close()


@pytest.fixture(scope="module")
def vllm_server(local_runs, toy_paths):
    """The toy policy served by vLLM (after the offline run ended)."""
    model = str(toy_paths["policy"])
    with serve_vllm(model, "--dtype", "float32", "--max-model-len", "128") as url:
        yield {"url": url, "model": model}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def all_runs(local_runs, vllm_server, parity_input):
    root = local_runs["root"]
    res, _ = run_generate_cli("--engine", "openai", "--base-url", vllm_server["url"], *JOB, "--input", parity_input,
                              "--out", root / "openai")
    assert res.returncode == 0, res.stderr
    return {name: load_table(stage_dir(root / name, "generate"), "candidates")
            for name in ("transformers", "vllm", "openai")}


def test_vllm_cli_run_exits_cleanly_and_leaves_no_process(local_runs):
    # vLLM did start its engine process(es) during the run; run_generate_cli asserted none outlived it
    assert local_runs["vllm_spawned"]
    assert read_manifest(stage_dir(local_runs["root"] / "vllm", "generate")).status == "complete"


def test_same_schema_rows_text_and_accounting(all_runs, parity_input):
    prompts = len(parity_input.read_text().splitlines())
    ref = all_runs["transformers"]
    for name, ds in all_runs.items():
        assert ds.features == ref.features, name
        assert set(CANDIDATE_COLUMNS) <= set(ds.column_names)
        assert len(ds) == 2 * prompts
        assert set(ds["engine"]) == {name} and set(ds["model"]) == {"toy:policy"}
        assert ds["failure"] == [None] * len(ds)
        key = list(zip(ds["prompt_id"], ds["candidate_index"]))
        assert key == list(zip(ref["prompt_id"], ref["candidate_index"])), name
        # greedy float32: the same text, token counts and finish reasons on every engine
        assert ds["text"] == ref["text"], name
        assert ds["num_tokens"] == ref["num_tokens"], name
        assert ds["finish_reason"] == ref["finish_reason"], name
        assert ds["logprob_sum"] == pytest.approx(ref["logprob_sum"], abs=LOGPROB_TOLERANCE), name


def test_manifest_accounting_matches_rows(all_runs, local_runs):
    for name, ds in all_runs.items():
        summary = read_manifest(stage_dir(local_runs["root"] / name, "generate")).summary
        assert summary["tokens"] == sum(ds["num_tokens"]), name
        assert summary["candidates"] == len(ds) and summary["failed"] == 0, name


@pytest.mark.parametrize("tokenizer", [None, ""], ids=["local-tokenizer", "server-tokenize"])
def test_openai_over_vllm_judge_primitives_match_transformers(vllm_server, policy_engine, tokenizer):
    # score tokenises with the model directory's tokenizer (batched), or with the server's /tokenize
    e = OpenAIEngine(vllm_server["model"], base_url=vllm_server["url"], tokenizer=tokenizer)
    assert (e.local_tokenizer() is not None) == (tokenizer is None)
    chats = [[{"role": "user", "content": f"What is {a}+{b}?"}] for a, b in [(1, 2), (40, 55), (99, 99)]]
    prompts = [*chats, "What is 7+8?\n="]
    # Compare the tokens both engines rank in their top K on this model: a token far down the list
    # is outside what a server returns (-inf), and which tokens those are depends on the model built.
    got, want = e.next_token_logprobs(prompts, top_k=TOP_K), policy_engine.next_token_logprobs(prompts, top_k=TOP_K)
    compared = 0
    for prompt, g, w in zip(prompts, got, want):
        shared = sorted(set(g) & set(w))
        for token in shared:
            assert g[token] == pytest.approx(w[token], abs=LOGPROB_TOLERANCE), (prompt, token)
        # the same tokens asked for by name, as the judges ask for verdict tokens
        [named] = e.next_token_logprobs([prompt], tokens=shared)
        assert named == pytest.approx({t: w[t] for t in shared}, abs=LOGPROB_TOLERANCE), prompt
        compared += len(shared)
    assert compared >= 3, (got, want)
    eos = policy_engine.tokenizer.eos_token
    continuations = ["3" + eos, "95" + eos, "198" + eos, "15"]
    got = e.score(prompts, continuations)
    want = policy_engine.score(prompts, continuations)
    assert [len(g) for g in got] == [len(w) for w in want] == [2, 3, 4, 2]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=LOGPROB_TOLERANCE)
    # many rows per request (more than one request's worth), repeated prompts, an empty continuation
    many_prompts = [chats[k % 3] for k in range(70)] + ["What is 7+8?\n="]
    many = [f"{k % 13}{eos}" for k in range(70)] + [""]
    got, want = e.score(many_prompts, many), policy_engine.score(many_prompts, many)
    assert [len(g) for g in got] == [len(w) for w in want] and got[-1] == []
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=LOGPROB_TOLERANCE)


def test_openai_over_vllm_sampling_n_in_one_request(vllm_server):
    from rlaif.engines import GenerationRequest
    from rlaif.records import SamplingParams

    e = OpenAIEngine(vllm_server["model"], base_url=vllm_server["url"])
    chat = [{"role": "user", "content": "What is 12+30?"}]
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=6)
    [a] = e.generate([GenerationRequest(chat, params, seed=3)])
    [b] = e.generate([GenerationRequest(chat, params, seed=3)])
    assert len(a.completions) == 4 and a.prompt_tokens > 0
    assert [c.text for c in a.completions] == [c.text for c in b.completions]  # seeded per request
    assert all(c.num_tokens > 0 and c.logprob_sum is not None and c.logprob_sum <= 0 for c in a.completions)
    assert json.dumps([c.finish_reason for c in a.completions]).count("error") == 0
