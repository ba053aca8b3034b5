"""KTO (`KTOTrainer`) on unpaired prompt/completion/label rows: good and bad answers need no partner."""

from __future__ import annotations

from pathlib import Path

import datasets

from rlaif.config import TrainConfig
from rlaif.train.common import lora_config, trainer_args

UNPAIRED_COLUMNS = ["prompt", "completion", "label"]


def build_kto_trainer(base: str, train: datasets.Dataset, cfg: TrainConfig, output_dir: Path, seed: int,
                      tokenizer, eval_dataset: datasets.Dataset | None = None, callbacks=(),
                      reference: str | None = None):
    from transformers import AutoModelForCausalLM
    from trl import KTOConfig, KTOTrainer

    loss = cfg.setting("kto", "loss_type")
    args = KTOConfig(**trainer_args(cfg, "kto", output_dir, seed), max_length=cfg.max_length,
                     beta=cfg.setting("kto", "beta"), loss_type=loss[0] if isinstance(loss, list) else loss)
    ref_model = AutoModelForCausalLM.from_pretrained(reference) if reference and reference != base else None
    return KTOTrainer(model=base, ref_model=ref_model, args=args,
                      train_dataset=train.select_columns(UNPAIRED_COLUMNS),
                      eval_dataset=eval_dataset.select_columns(UNPAIRED_COLUMNS) if eval_dataset is not None else None,
                      processing_class=tokenizer, peft_config=lora_config(cfg.lora, "CAUSAL_LM"),
                      callbacks=list(callbacks))
