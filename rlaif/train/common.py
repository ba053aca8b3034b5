"""What every trainer shares: device and precision, LoRA, TRL arguments, progress, saving.

The wrappers in this package only map our `TrainConfig` onto TRL's configs; TRL does the
training. Defaults that hurt on CPU or on small models (bf16 everywhere, gradient
checkpointing, max_length 1024, reporting to wandb) are set here once; each method's learning
rate, beta and loss live in the config (`train.<method>`), so RUN/pipeline.yaml shows them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback

from rlaif.config import LoraBlock, TrainConfig
from rlaif.errors import ConfigError
from rlaif.progress import StageProgress
from rlaif.runs import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

TRAIN_META = "rlaif_train.json"

def on_gpu(cfg: TrainConfig) -> bool:
    if cfg.device == "cpu":
        return False
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"field 'train.device': {cfg.device!r} asked for, but torch sees no CUDA device")
    return torch.cuda.is_available()


def precision(cfg: TrainConfig) -> dict:
    """bf16/fp16 mixed precision on GPUs that support it; float32 on CPU."""
    gpu = on_gpu(cfg)
    if cfg.dtype == "auto":
        bf16 = gpu and torch.cuda.is_bf16_supported()
        return {"bf16": bf16, "fp16": False}
    if not gpu and cfg.dtype in ("bfloat16", "float16"):
        log.warning("train.dtype=%s on CPU: training in float32", cfg.dtype)
        return {"bf16": False, "fp16": False}
    return {"bf16": cfg.dtype == "bfloat16", "fp16": cfg.dtype == "float16"}


def trainer_args(cfg: TrainConfig, method: str, output_dir: Path, seed: int) -> dict:
    """Keyword arguments every TRL config takes (a `transformers.TrainingArguments` subclass)."""
    args = dict(
        output_dir=str(output_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.setting(method, "learning_rate"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_ratio=cfg.warmup_ratio,
        gradient_checkpointing=cfg.gradient_checkpointing,
        use_cpu=not on_gpu(cfg),
        report_to="none",
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **precision(cfg),
    )
    try:
        import transformers.training_args as ta  # warmup_ratio is deprecated in transformers 5

        if "warmup_ratio" not in ta.TrainingArguments.__dataclass_fields__:
            args.pop("warmup_ratio")
    except Exception:  # pragma: no cover
        pass
    return args


def lora_config(block: LoraBlock | None, task_type: str):
    """A `peft.LoraConfig` for the `train.lora` section, or None for full fine-tuning."""
    if block is None:
        return None
    try:
        from peft import LoraConfig
    except ImportError:
        raise ConfigError("field 'train.lora' needs the peft package: pip install peft") from None
    return LoraConfig(r=block.r, lora_alpha=block.alpha, lora_dropout=block.dropout,
                      target_modules=block.target_modules, task_type=task_type)


CHECKSUMS = "rlaif_checksums.json"


class ChecksumCallback(TrainerCallback):
    """After the Trainer saves `checkpoint-N`, record size and sha256 of its files, so a resume can tell a
    damaged checkpoint from an intact one (safetensors and torch files carry no checksum of their own)."""

    def on_save(self, args, state, control, **kw):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            files = {str(p.relative_to(ckpt)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                     for p in sorted(ckpt.rglob("*")) if p.is_file() and p.name != CHECKSUMS}
            atomic_write_bytes(ckpt / CHECKSUMS, json.dumps(files, indent=1).encode())


def checkpoint_problem(ckpt: Path) -> str | None:
    """What differs between a checkpoint and the checksums recorded when it was saved (none recorded: None)."""
    record = ckpt / CHECKSUMS
    if not record.exists():
        return None
    try:
        recorded = json.loads(record.read_text())
    except ValueError:
        return f"{record}: not valid JSON"
    for name, facts in recorded.items():
        path = ckpt / name
        if not path.exists():
            return f"{path}: missing"
        if path.stat().st_size != facts["bytes"]:
            return f"{path}: {path.stat().st_size} bytes, but {facts['bytes']} were saved (truncated or overwritten)"
        if sha256_file(path) != facts["sha256"]:
            return f"{path}: content differs from what was saved (sha256 mismatch)"
    return None


class ProgressCallback(TrainerCallback):
    """Drives our progress bar from the Trainer's steps (HF's own tqdm is off)."""

    def __init__(self, name: str, enabled: bool):
        self.name, self.enabled, self.bar, self.start_step = name, enabled, None, 0

    def on_train_begin(self, args, state, control, **kw):
        self.start_step = state.global_step  # > 0 when resumed from a checkpoint
        self.bar = StageProgress(self.name, total=state.max_steps, done=state.global_step, unit="steps",
                                 enabled=self.enabled).__enter__()

    def on_step_end(self, args, state, control, **kw):
        if self.bar:
            self.bar.advance(1)

    def on_train_end(self, args, state, control, **kw):
        if self.bar:
            self.bar.__exit__(None, None, None)
            self.bar = None


@dataclass
class TrainResult:
    """What a finished training run reports: where the checkpoint is and its figures."""

    checkpoint: Path
    summary: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.checkpoint


def first_last(history: list[dict], key: str) -> tuple[float | None, float | None]:
    values = [h[key] for h in history if key in h and isinstance(h[key], (int, float))]
    return (values[0], values[-1]) if values else (None, None)


def summarise(trainer, method: str, seconds: float, resumed_from: str | None, start_step: int = 0) -> dict:
    """Loss at start and end, the method's own figures at the end, steps and time."""
    history = trainer.state.log_history
    loss0, loss1 = first_last(history, "loss")
    out = {"method": method, "steps": trainer.state.global_step, "loss_start": loss0, "loss_end": loss1}
    wanted = {
        "rm": ("accuracy", "margin"),
        "dpo": ("rewards/accuracies", "rewards/margins"),
        "kto": ("rewards/chosen_sum", "rewards/rejected_sum", "kl"),
        "sft": ("mean_token_accuracy",),
        "grpo": ("reward", "reward_std"),
    }[method]
    for key in wanted:
        start, end = first_last(history, key)
        if end is not None:
            out[f"{key}_start"], out[f"{key}_end"] = start, end
    out["train_seconds"] = round(seconds, 2)
    run_steps = trainer.state.global_step - start_step
    out["steps_per_s"] = round(run_steps / seconds, 3) if seconds else None
    if resumed_from:
        out["resumed_from"] = Path(resumed_from).name
        out["resumed_at_step"] = start_step
    return out


def save_final(trainer, target: Path, meta: dict, lora: LoraBlock | None) -> Path:
    """Weights, tokenizer (with its chat template) and the config that made them, atomically.

    A LoRA run saves its adapter (transformers loads it over the base named in
    adapter_config.json), plus the merged weights when `lora.merge` is set.
    """
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model = trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model
    tok = trainer.processing_class
    if lora is not None and lora.merge:
        model = model.merge_and_unload()
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / TRAIN_META).write_text(json.dumps(meta, indent=2, default=str))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def read_meta(directory: Path) -> dict | None:
    path = Path(directory) / TRAIN_META
    return json.loads(path.read_text()) if path.exists() else None


def timed_train(trainer, resume_from: str | None) -> float:
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    return time.perf_counter() - t0
