"""Supervised fine-tuning (`SFTTrainer`) on chat `messages`, e.g. the chosen responses or a seed set.

A `messages` list that ends with an assistant turn is split into TRL's prompt/completion form, so
the loss falls on the answer only (TRL's `completion_only_loss`), whatever the chat template.
"""

from __future__ import annotations

from pathlib import Path

import datasets

from rlaif.config import TrainConfig
from rlaif.train.common import lora_config, trainer_args


def to_prompt_completion(dataset: datasets.Dataset) -> datasets.Dataset:
    """`messages` -> `prompt` (all turns but the last) / `completion` (the last, an assistant turn)."""
    if "messages" not in dataset.column_names:
        return dataset.select_columns(["prompt", "completion"])

    def split(row):
        msgs = row["messages"]
        if msgs and msgs[-1]["role"] == "assistant":
            return {"prompt": msgs[:-1], "completion": msgs[-1:]}
        return {"prompt": [], "completion": msgs}

    return dataset.select_columns(["messages"]).map(split, remove_columns=["messages"])


def build_sft_trainer(base: str, train: datasets.Dataset, cfg: TrainConfig, output_dir: Path, seed: int,
                      tokenizer, eval_dataset: datasets.Dataset | None = None, callbacks=()):
    from trl import SFTConfig, SFTTrainer

    loss = cfg.setting("sft", "loss_type")
    args = SFTConfig(**trainer_args(cfg, "sft", output_dir, seed), max_length=cfg.max_length,
                     loss_type=loss[0] if isinstance(loss, list) else loss, completion_only_loss=True)
    return SFTTrainer(model=base, args=args, train_dataset=to_prompt_completion(train),
                      eval_dataset=to_prompt_completion(eval_dataset) if eval_dataset is not None else None,
                      processing_class=tokenizer, peft_config=lora_config(cfg.lora, "CAUSAL_LM"),
                      callbacks=list(callbacks))
