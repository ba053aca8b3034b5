"""Reward model (`RewardTrainer`): a sequence classifier with one output, trained on chosen/rejected pairs.

Bradley-Terry loss, -log sigmoid(r(chosen) - r(rejected)). The head starts random; the body
starts from the base model, so a reward model of a task starts from a model that knows the task.
"""

from __future__ import annotations

from pathlib import Path

import datasets

from rlaif.config import TrainConfig
from rlaif.train.common import lora_config, trainer_args

PAIR_COLUMNS = ["prompt", "chosen", "rejected"]


def build_reward_trainer(base: str, train: datasets.Dataset, cfg: TrainConfig, output_dir: Path, seed: int,
                         tokenizer, eval_dataset: datasets.Dataset | None = None, callbacks=()):
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(**trainer_args(cfg, "rm", output_dir, seed), max_length=cfg.max_length)
    return RewardTrainer(model=base, args=args, train_dataset=train.select_columns(PAIR_COLUMNS),
                         eval_dataset=eval_dataset.select_columns(PAIR_COLUMNS) if eval_dataset is not None else None,
                         processing_class=tokenizer, peft_config=lora_config(cfg.lora, "SEQ_CLS"),
                         callbacks=list(callbacks))
