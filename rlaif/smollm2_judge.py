"""`smollm2:135m-ifeval-rm`: a judge fine-tuned from SmolLM2-135M-Instruct, built by one command.

A prompted 135M model is a position-biased judge, but the same model trained as a reward model on
verifier-labelled pairs of its own answers (the approach of Prometheus, JudgeLM and Skywork-Critic)
judges the instruction-following task well. The recipe is a pipeline file,
`pipelines/smollm2-ifeval-rm.yaml`, run through the usual stages (generate, judge with the verifiers,
filter to every pass-vs-fail pair, export with minimal edit pairs beside them, train rm) into a run
directory under
`$RLAIF_CACHE/smollm2/`, so a killed build resumes and the build's data stays beside the weights.
The directory's name carries a hash of the recipe, so a changed recipe builds a new judge.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from filelock import FileLock

from rlaif import sources
from rlaif.config import PipelineConfig, load_config
from rlaif.errors import ConfigError
from rlaif.progress import console
from rlaif.runs import dump_json, iteration_dir
from rlaif.stages.export import run_export
from rlaif.stages.filter import run_filter
from rlaif.stages.generate import run_generate
from rlaif.stages.judge import run_judge
from rlaif.templates import PROMPTS_DIR

log = logging.getLogger(__name__)

NAME = "135m-ifeval-rm"
RECIPE = PROMPTS_DIR.parent / "pipelines" / "smollm2-ifeval-rm.yaml"
BUILD_COMMAND = "rlaif smollm2 build-judge"
BUILT = "judge_build.json"


def recipe(sets: list[str] | None = None) -> PipelineConfig:
    return load_config(RECIPE, sets)


def build_dir(cfg: PipelineConfig) -> Path:
    """The build's run directory: named for the recipe's content, so a changed recipe is a new judge."""
    digest = _digest(cfg)
    return sources.cache_root() / "smollm2" / f"{NAME}-{digest}"


def model_dir(run: Path) -> Path:
    return iteration_dir(run, 0) / "reward_model"


def resolve(name: str) -> str:
    """The built judge's checkpoint; a ConfigError naming the build command when it is not built yet."""
    run = build_dir(recipe())
    if not (run / BUILT).is_file():
        raise ConfigError(f"{name!r} is not built yet: run `{BUILD_COMMAND}` once (it trains a reward model from "
                          f"smollm2:135m-instruct into {run}; about 66 minutes on 2 idle CPU cores)")
    return str(model_dir(run))


def build(sets: list[str] | None = None, *, progress: bool = True) -> dict:
    """Run the recipe's stages into its build directory (resuming what a killed build finished), then record
    the build; returns that record. A finished build is returned as it is."""
    from rlaif.stages.train import run_train  # torch and TRL

    cfg = recipe(sets)
    run = build_dir(cfg)
    run.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(run) + ".lock"):
        if (run / BUILT).is_file():
            return json.loads((run / BUILT).read_text())
        console.print(f"smollm2:{NAME}: building the judge in {run} (resumable: rerun the same command after a stop)")
        t0 = time.perf_counter()
        seconds, results = {}, {}
        for stage, call in (("generate", lambda: run_generate(cfg, run, progress=progress, record=True)),
                            ("judge", lambda: run_judge(cfg, run, progress=progress)),
                            ("filter", lambda: run_filter(cfg, run, progress=progress)),
                            ("export", lambda: run_export(cfg, run)),
                            ("train", lambda: run_train(cfg, run, method="rm", progress=progress))):
            start = time.perf_counter()
            results[stage] = call()
            seconds[stage] = round(time.perf_counter() - start, 1)
        trained = results["train"].summary
        record = {"name": f"smollm2:{NAME}", "recipe": RECIPE.name, "overrides": list(sets or []),
                  "base": cfg.train.base, "prompts": cfg.generate.input, "skipped_prompts": cfg.generate.skip,
                  "prompts_used": cfg.generate.limit, "export": results["export"],
                  "train_pairs": trained.get("examples"), "eval_accuracy": trained.get("eval_accuracy"),
                  "seconds_by_stage": seconds, "seconds": round(time.perf_counter() - t0, 1),
                  "model": str(model_dir(run))}
        dump_json(run / BUILT, record)
    log.info("smollm2:%s built in %.0f s: %s", NAME, record["seconds"], run)
    return record


def _digest(cfg: PipelineConfig) -> str:
    text = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]
