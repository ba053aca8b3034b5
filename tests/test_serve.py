"""`rlaif serve`: a real uvicorn server on 127.0.0.1 answering OpenRLHF's protocol and /score with the same rewards
as `rlaif.rewards`, batching concurrent clients, and refusing bad, oversized or unauthenticated requests."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time

import httpx
import pytest

from conftest import RLAIF
from rlaif import serve, toy
from rlaif.config import JudgeConfig
from rlaif.judges import build_judge
from rlaif.rewards import judge_reward, pairwise_reward, pointwise_reward, verifier_reward


@pytest.fixture(scope="module")
def judge_engine(toy_paths):
    from rlaif.engines.transformers import TransformersEngine

    return TransformersEngine(str(toy_paths["judge"]), batch_size=64, display_name="toy:judge")


@pytest.fixture(scope="module")
def pointwise(judge_engine):
    cfg = JudgeConfig(kind="pointwise", model="toy:judge", template="toy-pointwise")
    return judge_reward(cfg, judge=build_judge(cfg, judge_engine))


@contextlib.contextmanager
def serving(app, host: str = "127.0.0.1"):
    """A real uvicorn server for `app` in a thread; yields its URL on 127.0.0.1."""
    sock = serve.bind(host, 0)
    server = serve.server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def chat(q: str) -> list[dict]:
    return [{"role": "user", "content": q}]


def test_score_and_openrlhf_answer_what_the_reward_function_gives(pointwise, judge_engine):
    q = toy.question(12, 30)
    texts = ["42", "41", "4"]
    expected = pointwise.judge_batch([chat(q)] * 3, texts).rewards
    with serving(serve.create_app(pointwise)) as url:
        health = httpx.get(f"{url}/health").json()
        assert health["status"] == "ok" and health["judge"]["judge_model"] == "toy:judge"
        body = httpx.post(f"{url}/score", json={"prompts": [q] * 3, "completions": texts}, timeout=60).json()
        assert body["rewards"] == pytest.approx(expected, abs=1e-9) and body["reward_name"] == "rlaif_pointwise"
        assert [len(d["score_distribution"]) for d in body["details"]] == [5, 5, 5]
        # OpenRLHF sends prompt + response (with the end-of-turn token) and the prompt; chat messages work too
        openrlhf = httpx.post(f"{url}/get_reward", json={"query": [q + t + "</s>" for t in texts], "prompts": [q] * 3,
                                                         "labels": ["42"] * 3}, timeout=60).json()
        assert openrlhf["rewards"] == pytest.approx(expected, abs=1e-9) and openrlhf["scores"] == openrlhf["rewards"]
        assert openrlhf["extra_logs"] == {"judge_failed": [0.0, 0.0, 0.0]}
        as_messages = httpx.post(f"{url}/score", json={"prompts": [chat(q)] * 3, "completions": [
            [{"role": "assistant", "content": t}] for t in texts]}, timeout=60).json()
        assert as_messages["rewards"] == body["rewards"]

    # a pairwise reward over the group, and a verifier fed by OpenRLHF's labels
    judge = build_judge(JudgeConfig(kind="pairwise", model="toy:judge", template="toy-pairwise"), judge_engine)
    group = pairwise_reward(judge=judge)
    prompts = [chat(q)] * 3 + [chat(toy.question(1, 1))] * 2
    answers = texts + ["2", "3"]
    expected = group.judge_batch(prompts, answers).rewards
    with serving(serve.create_app(group)) as url:
        body = httpx.post(f"{url}/score", json={"prompts": prompts, "completions": answers}, timeout=60).json()
        assert body["rewards"] == pytest.approx(expected, abs=1e-9)
        assert [d["group"] for d in body["details"]] == [0, 0, 0, 1, 1]
        assert [len(d["comparisons"]) for d in body["details"]] == [2, 2, 2, 1, 1]
    with serving(serve.create_app(verifier_reward(verifier="rlaif.toy:accuracy_reward"))) as url:
        body = httpx.post(f"{url}/get_reward", json={"query": [q + "42", q + "41"], "prompts": [q, q],
                                                     "labels": ["42", "42"]}).json()
        assert body["rewards"] == [1.0, 0.0]


def test_sixteen_concurrent_clients_are_batched_and_get_their_own_answers(pointwise):
    # each client asks about its own problem; requests of 1-3 completions, 3 requests per client
    clients = []
    for c in range(16):
        a, b = toy.problems()["test"][c]
        answers = [str(a + b), str(a + b + 1), str(a + b + 10)]
        clients.append([(toy.question(a, b), answers[:1 + (c + r) % 3]) for r in range(3)])
    expected = {(q, tuple(t)): pointwise.judge_batch([chat(q)] * len(t), t).rewards
                for requests in clients for q, t in requests}
    assert len({round(v, 2) for vs in expected.values() for v in vs}) >= 16  # so a mix-up would show

    async def client(url: str, requests: list) -> list:
        async with httpx.AsyncClient(timeout=120) as http:
            out = []
            for q, t in requests:
                r = await http.post(f"{url}/score", json={"prompts": [q] * len(t), "completions": t})
                assert r.status_code == 200, r.text
                out.append(((q, tuple(t)), r.json()["rewards"]))
            return out

    async def everyone(url: str):
        return await asyncio.gather(*(client(url, reqs) for reqs in clients))

    with serving(serve.create_app(pointwise, max_batch_size=64, max_wait_ms=50)) as url:
        answered = asyncio.run(everyone(url))
        metrics = httpx.get(f"{url}/metrics").json()
    for per_client in answered:
        for key, got in per_client:
            # batched with other requests, left padding moves float32 sums by ~1e-4; answers differ by far more
            assert got == pytest.approx(expected[key], abs=2e-3)
    assert metrics["requests"]["/score"] == 48 and metrics["completions"] == sum(len(t) for r in clients for _, t in r)
    assert metrics["batch_requests"]["max"] > 1 and metrics["batches"] < 48
    assert metrics["latency_ms"]["n"] == 48 and metrics["latency_ms"]["p50"] <= metrics["latency_ms"]["p99"]
    assert metrics["judgments_per_s"] > 0 and metrics["errors"] == {}


MALFORMED = {
    "not json": ("/score", b"{prompts: nope", "body"),
    "no prompts": ("/score", {"completions": ["1"]}, "prompts"),
    "lengths differ": ("/score", {"prompts": ["a", "b"], "completions": ["1"]}, "completions"),
    "a prompt of the wrong type": ("/score", {"prompts": ["a", 3], "completions": ["1", "2"]}, "prompts[1]"),
    "a message without content": ("/score", {"prompts": [[{"role": "user"}]], "completions": ["1"]},
                                  "prompts[0][0].content"),
    "a short column": ("/score", {"prompts": ["a", "b"], "completions": ["1", "2"], "columns": {"solution": ["1"]}},
                       "columns"),
    "a misspelt key": ("/score", {"prompts": ["a"], "completions": ["1"], "colums": {}}, "colums"),
    "groups mixing prompts": ("/score", {"prompts": ["a", "b"], "completions": ["1", "2"], "groups": [0, 0]},
                              "group 0"),
    "openrlhf without prompts": ("/get_reward", {"query": ["a1"]}, "prompts"),
    "openrlhf query without its prompt": ("/get_reward", {"query": ["b1"], "prompts": ["a"]}, "query[0]"),
    "openrlhf labels too short": ("/get_reward", {"query": ["a1", "a2"], "prompts": ["a", "a"], "labels": ["1"]},
                                  "labels"),
}


def test_malformed_bodies_get_422_naming_the_field(pointwise):
    with serving(serve.create_app(pointwise)) as url:
        for case, (path, body, field) in MALFORMED.items():
            kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
            r = httpx.post(url + path, **kwargs)
            assert r.status_code == 422, (case, r.text)
            assert field in r.json()["error"], (case, r.json()["error"])
        assert httpx.get(f"{url}/metrics").json()["errors"] == {"422": len(MALFORMED)}


def test_a_pairwise_reference_column_is_required(judge_engine):
    judge = build_judge(JudgeConfig(kind="pairwise", model="toy:judge", template="toy-pairwise"), judge_engine)
    with serving(serve.create_app(pairwise_reward(judge=judge, against="reference"))) as url:
        r = httpx.post(f"{url}/score", json={"prompts": ["a"], "completions": ["1"]})
        assert r.status_code == 422 and "columns.reference" in r.json()["error"]
        ok = httpx.post(f"{url}/score", json={"prompts": ["a"], "completions": ["1"], "columns": {"reference": ["1"]}})
        assert ok.status_code == 200 and ok.json()["rewards"] == [pytest.approx(0.5, abs=1e-9)]
        # OpenRLHF's labels fill the reference column: the completion equal to its reference gets exactly 1/2
        both = httpx.post(f"{url}/get_reward",
                          json={"query": ["a1", "a2"], "prompts": ["a", "a"], "labels": ["1", "1"]})
        assert both.json()["rewards"][0] == pytest.approx(0.5, abs=1e-9) and both.json()["rewards"][1] != 0.5


def test_body_limit_token_off_loopback_and_host_check(pointwise):
    app = serve.create_app(pointwise, max_body_bytes=2000)
    with serving(app) as url:
        small = {"prompts": ["What is 1+1?"], "completions": ["2"]}
        assert httpx.post(f"{url}/score", json=small, timeout=60).status_code == 200
        big = {"prompts": ["x" * 3000], "completions": ["2"]}
        r = httpx.post(f"{url}/score", json=big)
        assert r.status_code == 413 and "2000 bytes" in r.json()["error"]

        def chunks():  # no Content-Length: the limit holds on the bytes actually read
            yield b'{"prompts": ["'
            for _ in range(10):
                yield b"x" * 500
            yield b'"], "completions": ["2"]}'

        assert httpx.post(f"{url}/score", content=chunks(), headers={"content-type": "application/json"}
                          ).status_code == 413
        # a loopback server refuses a foreign Host header (DNS rebinding)
        assert httpx.get(f"{url}/health", headers={"host": "attacker.example"}).status_code == 400
    assert app.state.token is None

    open_app = serve.create_app(pointwise, host="0.0.0.0")
    token = open_app.state.token
    assert token and len(token) >= 24
    with serving(open_app, host="0.0.0.0") as url:
        for path in ("/health", "/metrics"):
            assert httpx.get(url + path).status_code == 401
            assert httpx.get(url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        body = {"query": ["What is 1+1?2"], "prompts": ["What is 1+1?"]}
        assert httpx.post(f"{url}/get_reward", json=body).status_code == 401
        assert httpx.post(f"{url}/get_reward", params={"token": token}, json=body, timeout=60).status_code == 200
        assert httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_chatml_prompts_and_end_tokens():
    text = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert serve.chat_from_text(text) == [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "What is 2+2?"}]
    assert serve.chat_from_text("What is 2+2?\n=") == [{"role": "user", "content": "What is 2+2?\n="}]
    assert serve.response_of(text + "4<|im_end|>\n", text, serve.END_TOKENS) == "4"
    assert serve.response_of("What is 2+2?=4</s></s>", "What is 2+2?=", serve.END_TOKENS) == "4"
    assert serve.response_of("other", "What", serve.END_TOKENS) is None


@pytest.mark.slow
def test_rlaif_serve_cli_answers_both_protocols(toy_paths):
    proc = subprocess.Popen([*RLAIF, "serve", "--judge", "pointwise", "-m", "toy:judge", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "rlaif serve: rlaif_pointwise at http://127.0.0.1:" in line, (line, proc.stderr.read())
        url = line.split(" at ")[1].split()[0]
        q = toy.question(2, 3)
        expected = pointwise_reward(model="toy:judge").judge_batch([chat(q)] * 2, ["5", "6"]).rewards
        score = httpx.post(f"{url}/score", json={"prompts": [q, q], "completions": ["5", "6"]}, timeout=120).json()
        assert score["rewards"] == pytest.approx(expected, abs=1e-9)
        assert score["judge"]["template_name"] == "additive"  # the judge stage's default rubric
        reward = httpx.post(f"{url}/get_reward", json={"query": [q + "5</s>", q + "6</s>"], "prompts": [q, q]},
                            timeout=120).json()
        assert reward["rewards"] == pytest.approx(expected, abs=1e-9)
        assert httpx.get(f"{url}/metrics").json()["requests"] == {"/score": 1, "/get_reward": 1}
    finally:
        proc.terminate()
        proc.wait(30)
