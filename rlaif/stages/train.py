"""The train stage: this iteration's export in, a checkpoint out (`iter-K/policy/` or `iter-K/reward_model/`).

    iter-K/export/<kind>/        what train reads (preference | unpaired | sft; a DatasetDict on disk)
    iter-K/train/<method>/       the Trainer's working directory: checkpoint-N/ every save_steps,
                                 settings.json (what a resume must match), log_history.json
    iter-K/policy/               the final weights, tokenizer + chat template, rlaif_train.json

A rerun after a crash resumes from the last `checkpoint-N` (the Trainer's
`resume_from_checkpoint`: weights, optimiser, scheduler, RNG and data order); a rerun after a
finished run with the same settings does nothing; changed settings are refused, not mixed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import datasets

from rlaif.config import PipelineConfig, config_hash
from rlaif.engines import resolve_model
from rlaif.errors import ConfigError, RunError
from rlaif.inputs import read_prompts
from rlaif.judges import build_judge
from rlaif.runs import (dump_json, fingerprint_files, iteration_dir, package_versions, previous_policy, record_config,
                        stage_lock)
from rlaif.stages.export import load_export
from rlaif.train.common import (ChecksumCallback, ProgressCallback, TrainResult, checkpoint_problem, read_meta,
                                save_final, summarise, timed_train)

log = logging.getLogger(__name__)

EVAL_KEYS = {"eval_loss", "eval_accuracy", "eval_margin", "eval_rewards/accuracies", "eval_rewards/margins",
             "eval_mean_token_accuracy", "eval_rewards/chosen_sum", "eval_rewards/rejected_sum"}

METHODS = ("rm", "dpo", "kto", "sft", "grpo")
EXPORT_KIND = {"rm": "preference", "dpo": "preference", "kto": "unpaired", "sft": "sft", "grpo": "preference"}
# Settings that change where or how often things are written, not the trained weights.
THROUGHPUT_ONLY = {"save_steps", "save_total_limit", "keep_checkpoints", "logging_steps", "device", "input", "method"}


def target_dir(run: str | Path, iteration: int, method: str) -> Path:
    return iteration_dir(run, iteration) / ("reward_model" if method == "rm" else "policy")


def resolve_base(cfg: PipelineConfig, run: str | Path, iteration: int) -> str:
    """train.base, else the previous iteration's policy, else generate.model."""
    if cfg.train.base:
        return resolve_model(cfg.train.base, "train.base")
    prev = previous_policy(run, iteration)
    if prev is not None:
        return str(prev)
    if cfg.generate.model:
        return resolve_model(cfg.generate.model, "generate.model")
    raise ConfigError("field 'train.base' is required: the model to start from (flag --base): a model name or path, or a registered source such as toy:policy")


def grpo_prompts(cfg: PipelineConfig, export: datasets.DatasetDict | None) -> tuple[datasets.Dataset, str]:
    """GRPO's prompt set: `prompt` (messages) plus extra columns the reward reads (e.g. `solution`)."""
    if cfg.train.grpo.prompts:
        prompts, fingerprint = read_prompts(cfg.train.grpo.prompts)
        return prompts.rename_column("messages", "prompt").remove_columns(["id"]), fingerprint
    if export is None:
        raise ConfigError("field 'train.grpo.prompts' is required when there is no preference export")
    train = export["train"]
    keep = [c for c in train.column_names if c not in ("chosen", "rejected")]
    seen: set[str] = set()

    def first(row):
        key = row.get("prompt_id") or json.dumps(row["prompt"])
        new = key not in seen
        seen.add(key)
        return new

    return train.select_columns(keep).filter(first), ""


def quiet_libraries() -> None:
    """Library progress bars (dataset maps, weight loading) off: the stage shows its own."""
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()


def last_complete_checkpoint(work: Path) -> str | None:
    """The newest `checkpoint-N` the Trainer finished writing; a partial one (killed mid-save) is removed.

    The Trainer writes a checkpoint in place and `trainer_state.json` last, so its presence marks
    a complete checkpoint.
    """
    found = sorted((int(p.name.split("-")[-1]), p) for p in work.glob("checkpoint-*") if p.name.split("-")[-1].isdigit())
    for _, path in reversed(found):
        if (path / "trainer_state.json").exists():
            problem = checkpoint_problem(path)
            if problem:
                raise RunError(f"{problem}; delete {path} to resume from the checkpoint before it, or rerun "
                               "with --overwrite to train from the start")
            return str(path)
        log.warning("train: removing the incomplete checkpoint %s (killed while saving)", path)
        shutil.rmtree(path, ignore_errors=True)
    return None


def _fingerprint(path: Path) -> str:
    """Content hash of a saved export; the `cache-*.arrow` files datasets adds beside it when mapped are not content."""
    if not path.is_dir():
        return ""
    return fingerprint_files([p for p in path.rglob("*") if p.is_file() and not p.name.startswith("cache-")])


def run_train(cfg: PipelineConfig, run: str | Path, *, method: str | None = None, iteration: int = 0,
              overwrite: bool = False, progress: bool = True, judge=None, target: Path | None = None,
              record: bool = False) -> TrainResult:
    """Train `method` on this iteration's export; resume from the last checkpoint; save the final one.

    `target` saves the checkpoint elsewhere than iter-K/policy (e.g. the loop's SFT control). One
    training writes into an iteration at a time (a lock on iter-K/train/). `record` writes the config
    to RUN/pipeline.yaml once these settings are accepted (the CLI does).
    """
    t = cfg.train
    method = method or t.method
    if method not in METHODS:
        raise ConfigError(f"field 'train.method': got {method!r}; expected one of {', '.join(METHODS)}")
    it_dir = iteration_dir(run, iteration)
    target = Path(target) if target is not None else target_dir(run, iteration, method)
    base = resolve_base(cfg, run, iteration)
    kind = EXPORT_KIND[method]
    export_path = Path(t.input) if t.input else it_dir / "export" / kind
    if method == "grpo":
        export = load_export(export_path, kind) if not t.grpo.prompts else None
        train, fingerprint = grpo_prompts(cfg, export)
        fingerprint = fingerprint or _fingerprint(export_path)
        eval_set = None
    else:
        export = load_export(export_path, kind)
        train, eval_set = export["train"], export.get("test")
        fingerprint = _fingerprint(export_path)
    seed = cfg.seed if t.seed is None else t.seed
    settings = {"method": method, "base": base, "seed": seed, "input_fingerprint": fingerprint,
                "train": t.model_dump(mode="json", exclude=THROUGHPUT_ONLY)}
    digest = config_hash(t, method, base, seed, fingerprint, exclude=THROUGHPUT_ONLY)

    done = read_meta(target)
    if done is not None and not overwrite:
        if done.get("config_hash") == digest:
            log.info("train: %s already trained with these settings in %s", method, target)
            return TrainResult(target, {**done["summary"], "skipped": "already trained"})
        raise RunError(f"{target}: holds a checkpoint trained with different settings ({done.get('method')}); "
                       "pass --overwrite to replace it, or train into another iteration (--iteration)")

    work = it_dir / "train" / (method if target == target_dir(run, iteration, method) else f"{method}-{target.name}")
    with stage_lock(it_dir / "train"):  # the settings are checked: from here on this process writes
        return _fit(cfg, run, iteration, method, base, train, eval_set, export_path, settings, digest, work, target,
                    overwrite=overwrite, progress=progress, judge=judge, record=record)


def _fit(cfg: PipelineConfig, run, iteration: int, method: str, base: str, train, eval_set, export_path: Path,
         settings: dict, digest: str, work: Path, target: Path, *, overwrite: bool, progress: bool, judge,
         record: bool) -> TrainResult:
    """Train in `work` (resuming its last intact checkpoint) and save the final checkpoint into `target`."""
    from transformers import AutoTokenizer, set_seed
    from transformers.trainer_callback import PrinterCallback

    t = cfg.train
    seed = settings["seed"]
    stored = work / "settings.json"
    if overwrite and work.exists():
        shutil.rmtree(work)
    resume = last_complete_checkpoint(work)
    started = json.loads(stored.read_text()).get("config_hash") if stored.exists() else None
    if resume and started != digest:
        raise RunError(f"{work}: a {method} run was started with different settings ({Path(resume).name} saved); "
                       "refusing to resume it. Rerun with the original settings to resume, or pass --overwrite "
                       "to start fresh.")
    if not resume and work.exists():
        shutil.rmtree(work)  # nothing resumable: stale logs of an earlier attempt go
    work.mkdir(parents=True, exist_ok=True)
    dump_json(stored, {"config_hash": digest, **settings})
    if record:
        record_config(cfg, run)
    if resume:
        log.info("train: resuming %s from %s", method, resume)

    quiet_libraries()
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    callbacks = [ProgressCallback(f"train {method}", progress), ChecksumCallback()]
    trainer = _build(method, base, train, cfg, work, seed, tokenizer, eval_set, callbacks, run, iteration, judge)
    trainer.remove_callback(PrinterCallback)  # our bar and summary replace the printed log dicts
    seconds = timed_train(trainer, resume)
    summary = summarise(trainer, method, seconds, resume, callbacks[0].start_step)
    if eval_set is not None and len(eval_set):
        metrics = trainer.evaluate()
        summary.update({k: v for k, v in metrics.items() if k in EVAL_KEYS})
    summary.update(examples=len(train), base=base)
    dump_json(work / "log_history.json", trainer.state.log_history)
    meta = {"method": method, "config_hash": digest, "settings": settings, "summary": summary,
            "versions": package_versions(), "export": str(export_path)}
    save_final(trainer, target, meta, t.lora)
    if not t.keep_checkpoints:
        for ckpt in work.glob("checkpoint-*"):
            shutil.rmtree(ckpt, ignore_errors=True)
    return TrainResult(target, summary)


def _build(method, base, train, cfg, work, seed, tokenizer, eval_set, callbacks, run, iteration, judge):
    t = cfg.train
    reference = None
    if t.reference:
        reference = resolve_model(t.reference, "train.reference")
    if method == "sft":
        from rlaif.train.sft import build_sft_trainer

        return build_sft_trainer(base, train, t, work, seed, tokenizer, eval_set, callbacks)
    if method == "rm":
        from rlaif.train.reward import build_reward_trainer

        return build_reward_trainer(base, train, t, work, seed, tokenizer, eval_set, callbacks)
    if method == "dpo":
        from rlaif.train.dpo import build_dpo_trainer

        return build_dpo_trainer(base, train, t, work, seed, tokenizer, eval_set, callbacks, reference)
    if method == "kto":
        from rlaif.train.kto import build_kto_trainer

        return build_kto_trainer(base, train, t, work, seed, tokenizer, eval_set, callbacks, reference)
    from rlaif.train.grpo import build_grpo_trainer, resolve_reward

    if t.grpo.reward == "judge" and judge is None and getattr(cfg, "judge", None) is not None:
        judge = build_judge(cfg.judge, seed=seed)
    reward = resolve_reward(t.grpo.reward, target_dir(run, iteration, "rm"), judge)
    return build_grpo_trainer(base, train, t, work, seed, tokenizer, reward, None, callbacks)
