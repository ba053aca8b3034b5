"""GRPO (`GRPOTrainer`): sample a group of answers per prompt, reward them, push toward the better ones.

The reward is a plain function with TRL's signature `f(completions, **columns) -> list[float]`:
a verifier named `module:function`, a trained reward model (TRL scores with it directly), or a
judge wrapped as such a function. Prompt columns other than `prompt` (e.g. `solution`) reach it.
"""

from __future__ import annotations

from pathlib import Path

import datasets

from rlaif import rewards
from rlaif.config import TrainConfig
from rlaif.errors import ConfigError
from rlaif.functions import load_function
from rlaif.train.common import lora_config, trainer_args


def resolve_reward(spec: str | None, reward_model_dir: Path | None = None, judge=None):
    """The `train.grpo.reward` setting -> what `GRPOTrainer(reward_funcs=...)` takes."""
    if not spec:
        raise ConfigError("field 'train.grpo.reward' is required for grpo: module:function (a verifier), "
                          "reward_model, a reward-model path, or judge")
    if spec == "reward_model":
        if reward_model_dir is None or not (reward_model_dir / "config.json").exists():
            raise ConfigError(f"field 'train.grpo.reward': no trained reward model at {reward_model_dir}; "
                              "run `rlaif train rm` first or give a path")
        return str(reward_model_dir)
    if spec == "judge":
        if judge is None:
            raise ConfigError("field 'train.grpo.reward': 'judge' needs the pipeline's judge section "
                              "(a scoring judge: likelihood, pointwise, reward-model or verifier)")
        return judge_reward(judge)
    if Path(spec).is_dir():
        return spec
    return load_function(spec, "train.grpo.reward")


def judge_reward(judge):
    """A judge (`rlaif.judges`) as a TRL reward function: `rlaif.rewards` (pairwise judges: win rate in the group)."""
    return rewards.judge_reward(judge=judge)


def build_grpo_trainer(base: str, train: datasets.Dataset, cfg: TrainConfig, output_dir: Path, seed: int,
                       tokenizer, reward, eval_dataset: datasets.Dataset | None = None, callbacks=()):
    from trl import GRPOConfig, GRPOTrainer

    g = cfg.grpo
    args = GRPOConfig(**trainer_args(cfg, "grpo", output_dir, seed), num_generations=g.num_generations,
                      max_completion_length=g.max_completion_length, temperature=g.temperature, beta=g.kl_beta)
    return GRPOTrainer(model=base, reward_funcs=reward, args=args, train_dataset=train, eval_dataset=eval_dataset,
                       processing_class=tokenizer, peft_config=lora_config(cfg.lora, "CAUSAL_LM"),
                       callbacks=list(callbacks))
