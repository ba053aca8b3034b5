"""Training changes behaviour in the intended direction, measured on held-out prompts (not "it ran").

The toy world differs from machine to machine inside its bands (toy.POLICY_BAND: the start policy
is imperfect, greedy .25-.50, so there is room to improve). No threshold here is one machine's
figure: each is a paired or binomial test against "no effect" at p < .001, and the effects were
measured on worlds built with two kernel settings (default AVX-512 / ATEN_CPU_CAPABILITY=avx2):
- DPO: the held-out log-prob margin log p(chosen) - log p(rejected) rises; paired t over 100
  held-out pairs must exceed 3 (measured t = 8.9 / 7.6, 85 / 83 of 100 pairs up).
- Reward model: held-out accuracy >= .62 on 200 pairs; under chance (.5) P(>= 124/200) = 3e-4
  (measured .745 / .815).
- GRPO with a verifier: held-out mean reward of sampled answers (T = 1.5, as in training) rises;
  paired t over all 1,000 toy:test prompts must exceed 3 (measured .406 -> .465, t = 9.6 /
  .352 -> .393, t = 7.6; on 200 prompts t was 2.8-5.2, too close). The verifier gives graded
  credit (1 - |answer - sum| / 10): with a 0/1 reward, 60-100 steps moved the reward too little.
"""

from __future__ import annotations

import statistics

import datasets
import pytest

from rlaif import toy
from rlaif.config import load_config
from test_train import pair_rows, write_exports


def closeness_reward(completions, solution, **_) -> list[float]:
    """A verifier with graded credit: 1 for the sum, falling linearly to 0 at 10 away; 0 for non-numbers."""
    out = []
    for completion, sol in zip(completions, solution):
        text = (completion[-1]["content"] if isinstance(completion, list) else completion).strip()
        out.append(max(0.0, 1 - abs(int(text) - int(sol)) / 10) if text.isdigit() else 0.0)
    return out


def paired_t(after: list[float], before: list[float]) -> float:
    d = [a - b for a, b in zip(after, before)]
    return statistics.mean(d) / (statistics.stdev(d) / len(d) ** 0.5)


def log_prob_margins(model_path: str, pairs: list[dict]) -> list[float]:
    from rlaif.engines.transformers import TransformersEngine

    engine = TransformersEngine(model_path)
    eos = engine.tokenizer.eos_token
    prompts = [p["prompt"] for p in pairs]
    chosen = engine.score(prompts, [p["chosen"][0]["content"] + eos for p in pairs])
    rejected = engine.score(prompts, [p["rejected"][0]["content"] + eos for p in pairs])
    return [sum(c) - sum(r) for c, r in zip(chosen, rejected)]


def test_dpo_raises_held_out_log_prob_margin(tmp_path, toy_paths):
    from rlaif.stages.train import run_train

    run = tmp_path / "run"
    write_exports(run, n_train=512, n_test=8, kind="any")
    held_out = pair_rows("test", 100, seed=1, kind="any")
    before = log_prob_margins(str(toy_paths["policy"]), held_out)
    cfg = load_config(None, ["train.base=toy:policy", "train.max_steps=48", "train.batch_size=16",
                             "train.max_length=32", "train.learning_rate=1e-4", "train.beta=0.1"])
    result = run_train(cfg, run, method="dpo", progress=False)
    after = log_prob_margins(str(result.checkpoint), held_out)
    assert statistics.mean(after) > statistics.mean(before)
    assert paired_t(after, before) > 3, (statistics.mean(before), statistics.mean(after))


@pytest.mark.slow
def test_reward_model_ranks_held_out_pairs_above_chance(tmp_path, toy_paths):
    from rlaif.stages.evaluate import reward_model_accuracy
    from rlaif.stages.train import run_train

    run = tmp_path / "run"
    write_exports(run, n_train=2000, n_test=200, kind="any")
    cfg = load_config(None, ["train.base=toy:policy", "train.max_steps=100", "train.batch_size=32",
                             "train.max_length=32", "train.learning_rate=3e-4"])
    result = run_train(cfg, run, method="rm", progress=False)
    held_out = datasets.load_from_disk(str(run / "iter-000" / "export" / "preference"))["test"]
    acc = reward_model_accuracy(str(result.checkpoint), held_out)
    assert acc["n"] == 200
    assert acc["value"] >= 0.62, acc
    assert acc["value"] == result.summary["eval_accuracy"]  # our scoring agrees with TRL's own evaluation


@pytest.mark.slow
def test_grpo_with_a_verifier_raises_held_out_reward(tmp_path, toy_paths):
    from rlaif.engines.transformers import TransformersEngine
    from rlaif.stages.evaluate import answers
    from rlaif.stages.train import run_train

    held_out = datasets.Dataset.from_list(toy.prompt_rows("test"))  # all 1,000: the effect is small, t grows with sqrt(n)

    def mean_rewards(path: str) -> list[float]:
        outs = answers(TransformersEngine(path), held_out, temperature=1.5, n=4, max_new_tokens=6, seed=0)
        return [statistics.mean(closeness_reward([[{"role": "assistant", "content": t}] for t in texts], [sol] * 4))
                for texts, sol in zip(outs, held_out["solution"])]

    before = mean_rewards(str(toy_paths["policy"]))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(toy_paths["prompts-train"].read_text().splitlines()[:2000]) + "\n")
    cfg = load_config(None, ["train.base=toy:policy", "train.max_steps=60", "train.batch_size=32",
                             "train.learning_rate=1e-4", "train.grpo.reward=test_train_behaviour:closeness_reward",
                             "train.grpo.temperature=1.5", "train.grpo.max_completion_length=6",
                             f"train.grpo.prompts={prompts}"])
    result = run_train(cfg, tmp_path / "run", method="grpo", progress=False)
    after = mean_rewards(str(result.checkpoint))
    assert statistics.mean(after) > statistics.mean(before)
    assert paired_t(after, before) > 3, (statistics.mean(before), statistics.mean(after))
