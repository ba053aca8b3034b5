"""Direct preference optimisation (`DPOTrainer`) on conversational prompt/chosen/rejected pairs.

The reference model is the base (or `train.reference`); with LoRA the base with the adapter
switched off serves as the reference, so no second copy is held. `loss_type` may combine losses
(e.g. [sigmoid, sft], RPO-style).
"""

from __future__ import annotations

from pathlib import Path

import datasets

from rlaif.config import TrainConfig
from rlaif.train.common import lora_config, trainer_args
from rlaif.train.reward import PAIR_COLUMNS


def build_dpo_trainer(base: str, train: datasets.Dataset, cfg: TrainConfig, output_dir: Path, seed: int,
                      tokenizer, eval_dataset: datasets.Dataset | None = None, callbacks=(),
                      reference: str | None = None):
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**trainer_args(cfg, "dpo", output_dir, seed), max_length=cfg.max_length,
                     beta=cfg.setting("dpo", "beta"), loss_type=list(cfg.setting("dpo", "loss_type")),
                     loss_weights=cfg.loss_weights)
    ref_model = AutoModelForCausalLM.from_pretrained(reference) if reference and reference != base else None
    return DPOTrainer(model=base, ref_model=ref_model, args=args, train_dataset=train.select_columns(PAIR_COLUMNS),
                      eval_dataset=eval_dataset.select_columns(PAIR_COLUMNS) if eval_dataset is not None else None,
                      processing_class=tokenizer, peft_config=lora_config(cfg.lora, "CAUSAL_LM"),
                      callbacks=list(callbacks))
