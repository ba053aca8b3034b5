"""The self-improving loop: the stages called in order, iteration after iteration, on one run directory.

Read it like a recipe: for each iteration K, generate with the policy iteration K-1 trained, judge,
filter, check the judge (its warnings, the anchor set), review (and gate), export, train, evaluate.
Every stage is resumable on its own, so a killed loop rerun with the same pipeline continues where it
stopped without redoing finished stages.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlaif.config import PipelineConfig, load_config
from rlaif.diagnosis import explain_gate_stop, explain_judge_stop
from rlaif.engines import resolve_model
from rlaif.errors import RunError
from rlaif.judges.anchor import anchor_quality, judge_flags
from rlaif.judges.pair_sets import load_pairs
from rlaif.report import write_report
from rlaif.review.gate import check_gate
from rlaif.runs import (LOOP_MANIFEST, dump_json, iteration_dir, load_state, now, previous_policy, read_manifest,
                        stage_dir)
from rlaif.stages.evaluate import policy_accuracy, run_evaluate
from rlaif.stages.export import run_export
from rlaif.stages.filter import run_filter
from rlaif.stages.generate import run_generate
from rlaif.stages.judge import run_judge
from rlaif.stages.review import open_review, review_stats, simulate_review

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    """What the loop knows between iterations; written to `RUN/loop.json` after every step."""

    name: str
    started_at: str = field(default_factory=now)
    status: str = "running"  # running | complete | stopped | waiting-for-review
    stop_reason: str | None = None
    finished_at: str | None = None  # when the loop last ended (complete or stopped); resumes move it on
    baseline: dict = field(default_factory=dict)
    judge_quality: dict = field(default_factory=dict)
    iterations: list[dict] = field(default_factory=list)
    best_policy: str | None = None
    best_iteration: int | None = None
    final_model: str | None = None

    def save(self, run: Path) -> None:
        dump_json(run / LOOP_MANIFEST, self.__dict__)


def iteration_config(cfg: PipelineConfig, run: Path, k: int) -> PipelineConfig:
    """Iteration K generates with the policy iteration K-1 trained (iteration 0: `generate.model`)."""
    c = cfg.model_copy(deep=True)
    previous = previous_policy(run, k)
    if previous is not None:
        c.generate.model = str(previous)
        if cfg.loop.judge_follows_policy:  # self-rewarding: the policy judges its own candidates
            c.judge.model = str(previous)
    return c


def _timed(times: dict, stage: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    times[stage] = round(time.perf_counter() - t0, 2)
    return out


def _metric(metrics: dict, name: str) -> float | None:
    value = metrics.get(name)
    if isinstance(value, dict):
        value = value.get("value", value.get("win_rate"))
    return value


def run_loop(cfg: PipelineConfig, run: str | Path, *, progress: bool = True) -> LoopState:
    """Run `loop.iterations` iterations over `run`; returns the final state (also in RUN/loop.json)."""
    from rlaif.stages.train import run_train

    run = Path(run)
    if cfg.judge.model:  # a judge that must be built first (smollm2:135m-ifeval-rm) says so before any stage runs
        resolve_model(cfg.judge.model, "judge.model")
    run.mkdir(parents=True, exist_ok=True)
    L = cfg.loop
    if L.anchor_pairs:
        load_pairs(L.anchor_pairs)  # a bad anchor file fails here, before any stage runs
    state = LoopState(name=run.name)
    previous = load_state(run)
    if previous:
        state.started_at = previous.get("started_at", state.started_at)
        state.baseline = previous.get("baseline", {})
        state.judge_quality = previous.get("judge_quality", {})
    if cfg.evaluate.checker and not state.baseline:
        state.baseline = policy_accuracy(cfg, cfg.generate.model, "generate.model")
    generative_judge = cfg.judge.model and cfg.judge.kind != "reward-model"  # a reward model cannot answer prompts
    if cfg.evaluate.checker and L.report_judge_accuracy and not state.judge_quality and generative_judge:
        same = cfg.judge.model == cfg.generate.model  # a policy judging itself: its rate as a policy is the baseline
        state.judge_quality = state.baseline if same else policy_accuracy(cfg, cfg.judge.model, "judge.model")
    best_value = _metric(state.baseline, L.metric)
    state.best_policy = cfg.generate.model
    stale = 0
    for k in range(L.iterations):
        c = iteration_config(cfg, run, k)
        times: dict[str, float] = {}
        log.info("loop: iteration %d of %d, policy %s", k, L.iterations, c.generate.model)
        _timed(times, "generate", run_generate, c, str(run), iteration=k, progress=progress)
        _timed(times, "judge", run_judge, c, str(run), iteration=k, progress=progress)
        _timed(times, "filter", run_filter, c, str(run), iteration=k, progress=progress)
        anchor = _timed(times, "anchor", anchor_quality, c, run, k) if L.anchor_pairs else None
        record = {"iteration": k, "policy_in": c.generate.model, "times": times, "stages": _stage_figures(run, k),
                  "anchor": anchor}
        flags = judge_flags(record) if L.stop_on_judge_flags else []
        if flags:  # a flagged judge: no review of its pairs, no training on them
            record["judge_gate"] = {"passed": False, "flags": flags}
            state.iterations.append(record)
            state.status, state.stop_reason = "stopped", explain_judge_stop(c, run, record, flags)
            break
        record["review"] = gate = _timed(times, "review", _review, c, run, k) if L.review else None
        # the stages the report reads (generate, judge, filter, review) are all finished here
        record["stages"] = _stage_figures(run, k)
        if gate is not None and not gate["passed"]:
            state.iterations.append(record)
            waiting = gate.get("waiting")
            state.status, state.stop_reason = ("waiting-for-review" if waiting else "stopped"), gate["message"]
            if not waiting:  # name the filter that took the pairs and both models' accuracy
                policy = state.iterations[-2].get("metrics") or {} if k else state.baseline
                state.stop_reason = explain_gate_stop(c, record, policy, state.judge_quality)
            break
        _timed(times, "export", run_export, c, str(run), iteration=k)
        if c.train.method is None:  # a dataset-generation pipeline: the export is the product
            state.iterations.append(record)
            state.save(run)
            continue
        if L.train_reward_model:
            record["reward_model"] = _timed(times, "train_rm", run_train, c, str(run), method="rm", iteration=k,
                                            progress=progress).summary
        result = _timed(times, "train", run_train, c, str(run), iteration=k, progress=progress)
        record["train"] = result.summary
        if L.control:
            record["control"] = _timed(times, "control", _control, c, run, k, progress)
        metrics = _timed(times, "evaluate", run_evaluate, c, str(run), iteration=k)
        record["metrics"] = metrics
        state.iterations.append(record)
        value = _metric(metrics, L.metric)
        if value is not None and (best_value is None or value > best_value + L.min_delta):
            best_value, state.best_policy, state.best_iteration, stale = value, str(result.path), k, 0
        else:
            stale += 1
        state.save(run)
        if L.patience and stale >= L.patience and k < L.iterations - 1:
            state.status, state.stop_reason = "stopped", (
                f"{L.metric} did not improve by more than {L.min_delta} for {stale} iteration(s)")
            break
    else:
        state.status = "complete"
    state.final_model = state.best_policy
    if state.status != "waiting-for-review":
        state.finished_at = now()
    state.save(run)

    write_report(run)
    return state


def _review(cfg: PipelineConfig, run: Path, k: int) -> dict:
    """Simulated reviewers answer at once; human reviewers make the loop wait until the gate's minimum is met."""
    kept = read_manifest(stage_dir(run, "filter", k)).summary.get("pairs")
    if kept == 0:  # nothing to sample, review or train on: a failed gate, which the stop explains
        return {"passed": False, "waiting": False, "reviewed": 0, "agreement": None, "ci95": None,
                "simulated": cfg.review.reviewer == "simulated",
                "message": f"review gate failed for {run} iter-{k:03d}: the filter kept no pairs to review"}
    if cfg.review.reviewer == "simulated":
        simulate_review(cfg, str(run), k)
    else:
        open_review(cfg, str(run), k)
    review_stats(cfg, str(run), k)
    gate = check_gate(run, k, cfg.review.min_agreement, cfg.review.min_reviewed)
    waiting = cfg.review.reviewer != "simulated" and gate.reviewed < cfg.review.min_reviewed
    message = gate.message
    if waiting:
        message = (f"{gate.message}\nReview the sample, then rerun the same `rlaif run` command to continue:\n"
                   f"    rlaif review {run} --iteration {k}")
    return {"passed": gate.passed, "waiting": waiting, "message": message, "reviewed": gate.reviewed,
            "agreement": gate.agreement, "ci95": list(gate.ci95) if gate.ci95 else None, "simulated": gate.simulated}


def _control(cfg: PipelineConfig, run: Path, k: int, progress: bool) -> dict:
    """The control: plain SFT on the same chosen answers, from the same base, evaluated the same way."""
    from rlaif.stages.train import run_train

    c = cfg.model_copy(deep=True)
    c.export.kind = "sft"
    run_export(c, str(run), iteration=k)
    c.train.method = "sft"
    c.train.loss_type = c.train.beta = c.train.loss_weights = None  # the preference loss's settings
    for key, value in cfg.loop.control_train.items():
        setattr(c.train, key, value)
    result = run_train(c, str(run), iteration=k, progress=progress, target=iteration_dir(run, k) / "control")
    return {"path": str(result.path), "train": result.summary, **policy_accuracy(c, str(result.path), "control")}


def _stage_figures(run: Path, k: int) -> dict:
    """Each stage's manifest summary, for the report."""
    out = {}
    for stage in ("generate", "judge", "filter", "review"):
        directory = iteration_dir(run, k) / stage
        try:
            manifest = read_manifest(directory) if (directory / "manifest.json").exists() else None
        except ValueError:
            manifest = None
        if manifest is not None:
            out[stage] = {"summary": manifest.summary, "seconds": manifest.seconds}
    return out


def run(config, run_dir: str | Path, *, progress: bool = True) -> LoopState:
    """Python API: `rlaif.run("pipelines/demo.yaml", "runs/x")` or with a PipelineConfig."""
    cfg = config if isinstance(config, PipelineConfig) else load_config(config)
    return run_loop(cfg, run_dir, progress=progress)
