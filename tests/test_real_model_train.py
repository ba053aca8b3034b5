"""Every trainer on SmolLM2-135M-Instruct, a few CPU steps each, through the train stage.

Each test checks that the loss moved, that the weights changed, and that the checkpoint loads and
generates (or, for the reward model, scores) in transformers; the merged LoRA DPO checkpoint also
generates in vLLM, with the same greedy text as in transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from safetensors import safe_open

from rlaif.config import load_config
from rlaif.stages.train import run_train

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

NAME = "smollm2:135m-instruct"
TOPICS = ["cats", "the sea", "bread", "rain", "trains", "music", "stars", "tea"]
CHOSEN = ["cats sleep a lot.", "the sea is deep and blue.", "bread smells good when it bakes.", "rain makes the grass green.",
          "trains run on rails.", "music can lift a mood.", "stars shine at night.", "tea is made from leaves."]
STEPS = 3
FAST = [f"train.base={NAME}", f"train.max_steps={STEPS}", "train.batch_size=2", "train.max_length=48",
        "train.logging_steps=1", f"train.save_steps={STEPS + 1}"]
PROBE = "model.layers.0.self_attn.q_proj.weight"


def lowercase_share(completions, **_) -> list[float]:
    """A verifier-style reward (TRL signature): the share of a reply's letters that are lowercase."""
    out = []
    for completion in completions:
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        letters = [c for c in text if c.isalpha()]
        out.append(sum(c.islower() for c in letters) / len(letters) if letters else 0.0)
    return out


def question(topic: str) -> list[dict]:
    return [{"role": "user", "content": f"Write one sentence about {topic} in all lowercase letters."}]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """preference and sft exports (as the export stage writes them): lowercase answers chosen over Title Case."""
    run = tmp_path_factory.mktemp("train-real")
    root = run / "iter-000" / "export"
    rows = [{"prompt": question(t), "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": c.title()}], "solution": c}
            for t, c in zip(TOPICS, CHOSEN)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(root / "preference"))
    sft = [{"messages": r["prompt"] + r["chosen"]} for r in rows]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(sft)}).save_to_disk(str(root / "sft"))
    return run


def train(method: str, exported: Path, tmp_path: Path, *extra: str):
    run = tmp_path / "run"
    (run / "iter-000").mkdir(parents=True)
    (run / "iter-000" / "export").symlink_to(exported / "iter-000" / "export")
    result = run_train(load_config(None, FAST + list(extra)), run, method=method, progress=False)
    assert result.summary["steps"] == STEPS
    history = json.loads((run / "iter-000" / "train" / method / "log_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == STEPS and len(set(losses)) > 1, losses  # the loss moved
    return result, losses


def weights_moved(checkpoint: Path, base: Path) -> float:
    """The largest change of one probe tensor between the base and a saved checkpoint."""
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as new, safe_open(str(base / "model.safetensors"),
                                                                                 "pt") as old:
        key = next(k for k in new.keys() if k.endswith(PROBE))
        return (new.get_tensor(key) - old.get_tensor(PROBE)).abs().max().item()


def greedy_texts(checkpoint: Path) -> list[str]:
    """The checkpoint loads in the transformers engine and answers (greedy, float32)."""
    from rlaif.engines import GenerationRequest
    from rlaif.engines.transformers import TransformersEngine
    from rlaif.records import SamplingParams

    engine = TransformersEngine(str(checkpoint), dtype="float32", batch_size=4)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    results = engine.generate([GenerationRequest(question(t), params) for t in ("dogs", "snow")])
    engine.close()
    assert all(r.failure is None and r.completions[0].num_tokens > 0 for r in results)
    texts = [r.completions[0].text for r in results]
    assert any(t.strip() for t in texts), texts  # (a few steps of DPO may teach it to stop early on one)
    return texts


@pytest.mark.parametrize("method, lr", [("sft", "5e-5"), ("dpo", "1e-5")])
def test_full_fine_tuning_moves_the_loss_and_the_checkpoint_generates(method, lr, exported, tmp_path, smollm2_path):
    result, losses = train(method, exported, tmp_path, f"train.learning_rate={lr}")
    assert losses[-1] < losses[0]  # the same 8 examples, seen again: the loss falls
    if method == "dpo":
        assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy = reference at the first step: log 2
    assert weights_moved(result.checkpoint, smollm2_path) > 0
    assert greedy_texts(result.checkpoint)


def test_reward_model_trains_and_scores(exported, tmp_path):
    from rlaif.judges.base import CandidateItem
    from rlaif.judges.reward_model import RewardModelJudge

    result, _ = train("rm", exported, tmp_path, "train.learning_rate=5e-5")
    assert result.checkpoint.name == "reward_model"
    judge = RewardModelJudge(str(result.checkpoint), display_name="rm")
    prompt = question("dogs")
    scores = judge.score([CandidateItem(prompt, "dogs like to run.", {}), CandidateItem(prompt, "Dogs Like To Run.", {})])
    assert all(isinstance(s.score, float) for s in scores) and scores[0].score != scores[1].score


def test_grpo_with_a_verifier_reward(exported, tmp_path, smollm2_path):
    result, _ = train("grpo", exported, tmp_path, "train.learning_rate=5e-5", "train.grpo.num_generations=2",
                      "train.grpo.max_completion_length=8",
                      "train.grpo.reward=test_real_model_train:lowercase_share")
    assert result.summary["reward_end"] is not None and 0 <= result.summary["reward_end"] <= 1
    assert weights_moved(result.checkpoint, smollm2_path) > 0
    assert greedy_texts(result.checkpoint)


@pytest.mark.vllm
def test_merged_lora_dpo_generates_in_transformers_and_vllm(exported, tmp_path, smollm2_path):
    from rlaif.engines import GenerationRequest
    from rlaif.engines.vllm import VLLMEngine
    from rlaif.records import SamplingParams

    result, losses = train("dpo", exported, tmp_path, "train.learning_rate=5e-4",
                           "train.lora={r: 8, alpha: 16, merge: true}")
    assert losses[-1] < losses[0]
    ckpt = result.checkpoint
    assert (ckpt / "config.json").exists() and not (ckpt / "adapter_config.json").exists()  # merged weights
    assert weights_moved(ckpt, smollm2_path) > 0
    want = greedy_texts(ckpt)
    engine = VLLMEngine(str(ckpt), dtype="float32", max_model_len=512, enforce_eager=True, gpu_memory_utilization=0.3)
    try:
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
        got = [r.completions[0].text for r in engine.generate([GenerationRequest(question(t), params)
                                                               for t in ("dogs", "snow")])]
    finally:
        engine.close()
    assert got == want
