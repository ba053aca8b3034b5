"""The `rlaif` command: one subcommand per stage. It only parses arguments and calls the stages."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from rlaif.errors import RlaifError

app = typer.Typer(
    help="rlaif: synthetic data and AI feedback. Generate candidates, judge them, keep the good pairs, train, repeat.",
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    add_completion=False,
)
toy_app = typer.Typer(help="The offline toy world: tiny models and a checkable task (for the demo and tests).",
                      no_args_is_help=True)
app.add_typer(toy_app, name="toy")

ConfigOpt = typer.Option(None, "--config", "-c", help="A pipeline YAML file; this command uses its own section.")
SetOpt = typer.Option(None, "--set", help="Override any config field: --set generate.n=8 (repeatable).")
IterOpt = typer.Option(0, "--iteration", "-k", help="Which iteration of the run directory (iter-K) to work on.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar or summary table.")
ExecutorOpt = typer.Option(None, "--executor", help="local (this process, the default) | ray (engine replicas on a Ray cluster: the ray section, RAY_ADDRESS, or a local instance). Same output either way.")


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    from rlaif.progress import console

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    for noisy in ("transformers", "datasets", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what each stage does.")):
    _setup_logging(verbose)


@app.command()
def generate(
    input: Optional[str] = typer.Option(None, "--input", "-i", help="Prompts: JSONL, Parquet, CSV, a saved datasets "
                                        "directory, or toy:train / toy:test. Needs a 'prompt' or 'messages' column."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Generator model name or path, or toy:policy."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (runs/NAME); default runs/<name> "
                                       "from the pipeline file."),
    n: Optional[int] = typer.Option(None, "--n", help="Candidates per prompt [config default 4]."),
    engine: Optional[str] = typer.Option(None, "--engine", "-e", help="transformers | vllm | openai."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="openai engine: the server's URL, e.g. "
                                           "http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL, else OpenAI's)."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="openai engine: the NAME of the environment "
                                              "variable holding the API key (default: OPENAI_API_KEY)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per forward pass (prompts x n)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Longest completion, in tokens."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature; 0 = greedy."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling threshold."),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="A string that ends a completion (repeatable)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Base seed; shard i uses seed + i."),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", help="Prompts per shard (unit of resume)."),
    prompt_column: Optional[str] = typer.Option(None, "--prompt-column", help="Column holding the prompt."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N prompts of the input."),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="Prepended as a system message."),
    template: Optional[str] = typer.Option(None, "--template", help="Generator template: a name in "
                                           "prompts/generate/ or a path to a Jinja2 file."),
    iteration: int = IterOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard this stage's earlier output and start fresh."),
    quiet: bool = QuietOpt,
    executor: Optional[str] = ExecutorOpt,
):
    """Write N candidate responses per prompt into RUN/iter-K/generate/ (resumable Parquet shards)."""
    from rlaif.config import load_config
    from rlaif.progress import console, summary_table
    from rlaif.stages.generate import run_generate

    cfg = load_config(config, set_, {
        "generate.input": input, "generate.model": model, "generate.n": n, "generate.engine": engine,
        "generate.batch_size": batch_size, "generate.max_new_tokens": max_new_tokens,
        "generate.temperature": temperature, "generate.top_p": top_p, "generate.stop": stop or None, "seed": seed,
        "generate.shard_size": shard_size, "generate.prompt_column": prompt_column, "generate.limit": limit,
        "generate.system_prompt": system_prompt, "generate.template": template,
        "generate.base_url": base_url, "generate.api_key_env": api_key_env, "executor": executor,
    })
    run = _run_dir(out, cfg)
    _save_pipeline(cfg, run)
    manifest = run_generate(cfg, str(run), iteration=iteration, overwrite=overwrite, progress=not quiet)
    if not quiet:
        console.print(summary_table(f"generate · {run}/iter-{iteration:03d}/generate", manifest.summary))


def _run_dir(out: Optional[Path], cfg) -> Path:
    from rlaif.errors import ConfigError

    if out is not None:
        return out
    if cfg.name:
        return Path("runs") / cfg.name
    raise ConfigError("no run directory: pass --out runs/NAME (or set 'name' in the pipeline file)")


def _save_pipeline(cfg, run: Path) -> None:
    """Keep the resolved config, as run, at the top of the run directory."""
    import yaml

    from rlaif.runs import atomic_write_bytes

    run.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run / "pipeline.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).encode())


@app.command()
def review(
    run: Path = typer.Argument(..., help="The run directory (runs/NAME) whose iter-K/filter/pairs people review."),
    iteration: int = IterOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Any non-loopback address requires "
                             "the token printed at start on every request."),
    port: int = typer.Option(8765, "--port", help="Port to listen on."),
    reviewer: Optional[str] = typer.Option(None, "--reviewer", help="Review as NAME (skips the name page). Several "
                                           "people can review at once: each opens /?reviewer=THEIR_NAME."),
    stats: bool = typer.Option(False, "--stats", help="Print the agreement statistics and the gate, record them in "
                               "RUN/iter-K/review/manifest.json, and exit (no server)."),
    simulate: bool = typer.Option(False, "--simulate", help="Answer the sample with simulated reviewers (the toy "
                                  "checker with review.noise; labelled simulated), then print the statistics."),
    gate: bool = typer.Option(False, "--gate", help="With --stats or --simulate: exit with an error when the gate "
                              "(review.min_agreement, review.min_reviewed) fails."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A pipeline YAML file (its review section); "
                                          "default RUN/pipeline.yaml when present."),
    set_: Optional[list[str]] = SetOpt,
    quiet: bool = QuietOpt,
):
    """Human spot-check of the judged pairs: serve the review page, or print the statistics and the gate."""
    from rlaif.config import load_config
    from rlaif.progress import console, summary_table
    from rlaif.stages import review as stage

    if config is None and (run / "pipeline.yaml").exists():
        config = run / "pipeline.yaml"
    cfg = load_config(config, set_)
    store = stage.open_review(cfg, str(run), iteration)
    if simulate or cfg.review.reviewer == "simulated":
        written = stage.simulate_review(cfg, str(run), iteration)
        logging.getLogger("rlaif.review").info("simulated verdicts: %s", written)
        stats = True
    if stats:
        from rlaif.review.stats import flat_summary

        manifest = stage.review_stats(cfg, str(run), iteration)
        summary = manifest.summary
        if not quiet:
            console.print(summary_table(f"review · {run}/iter-{iteration:03d}/review", flat_summary(summary)))
        typer.echo(summary["gate"]["message"])
        if gate and not summary["gate"]["passed"]:
            from rlaif.errors import RunError

            raise RunError(summary["gate"]["message"])
        return
    import uvicorn

    from rlaif.review.app import create_app

    web = create_app(store.path, host=host, default_reviewer=reviewer, min_agreement=cfg.review.min_agreement,
                     min_reviewed=cfg.review.min_reviewed)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={web.state.token}" if web.state.token else "")
    typer.echo(f"rlaif review: {store.num_items()} pairs in {store.path}", err=True)
    if web.state.token:
        typer.echo(f"token: {web.state.token}  (required on every request: this server is not on loopback)")
    typer.echo(f"open {url}", err=False)
    sys.stdout.flush()
    uvicorn.run(web, host=host, port=port, log_level="warning")


def _run_config(config: Optional[Path], run: Path) -> Optional[Path]:
    """A stage over an existing run reads the run's own pipeline.yaml unless --config names another file."""
    if config is None and (run / "pipeline.yaml").exists():
        return run / "pipeline.yaml"
    return config


@app.command("filter")
def filter_(
    run: Path = typer.Argument(..., help="Run directory (runs/NAME) holding iter-K/judge/."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="Pairs per prompt: best-vs-worst | "
                                           "best-vs-random | all-above-margin | top-k-vs-bottom-k."),
    min_margin: Optional[float] = typer.Option(None, "--min-margin", help="Drop pairs whose margin is under this."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A pipeline YAML file (default: "
                                          "RUN/pipeline.yaml); this command uses its `filter` section."),
    set_: Optional[list[str]] = SetOpt,
    iteration: int = IterOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard this stage's earlier output and start fresh."),
    quiet: bool = QuietOpt,
):
    """Filter the judged candidates of RUN/iter-K into preference pairs (iter-K/filter/pairs/) and the rows
    dropped with their reasons (iter-K/filter/dropped/), then print how many rows each filter dropped."""
    from rlaif.config import load_config
    from rlaif.progress import console, summary_table
    from rlaif.stages.filter import run_filter

    cfg = load_config(_run_config(config, run), set_, {"filter.strategy": strategy, "filter.min_margin": min_margin})
    _save_pipeline(cfg, run)
    manifest = run_filter(cfg, str(run), iteration=iteration, overwrite=overwrite, progress=not quiet)
    if not quiet:
        console.print(summary_table(f"filter · {run}/iter-{iteration:03d}/filter", manifest.summary))


@app.command("export")
def export_(
    run: Path = typer.Argument(..., help="Run directory (runs/NAME) holding iter-K/filter/."),
    kind: Optional[str] = typer.Option(None, "--kind", help="preference (DPO, reward model) | unpaired (KTO) | "
                                       "sft (best answer per prompt) [config default preference]."),
    format: Optional[str] = typer.Option(None, "--format", help="Format of the --out copy: hf (save_to_disk) | "
                                         "trl (save_to_disk, trainer columns only) | jsonl | parquet."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write a copy here (the run directory's "
                                       "iter-K/export/<kind>/ is always written)."),
    text: bool = typer.Option(False, "--text", help="TRL's standard text form instead of chat message lists."),
    test_size: Optional[float] = typer.Option(None, "--test-size", help="Hold out this share (or number) of "
                                              "prompts as a `test` split."),
    split_seed: Optional[int] = typer.Option(None, "--split-seed", help="Seed of the split [default: the "
                                             "pipeline's seed]."),
    reviewed_only: bool = typer.Option(False, "--reviewed-only", help="Only pairs people reviewed (needs the "
                                       "review stage; applies its gate)."),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="Refuse to export when judge-human "
                                                  "agreement is under this (overrides review.min_agreement)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A pipeline YAML file (default: "
                                          "RUN/pipeline.yaml); this command uses its `export` section."),
    set_: Optional[list[str]] = SetOpt,
    iteration: int = IterOpt,
    quiet: bool = QuietOpt,
):
    """Write the filtered pairs of RUN/iter-K as a TRL-ready dataset into iter-K/export/<kind>/ (where
    `rlaif train` reads it), and optionally a copy elsewhere."""
    from rlaif.config import load_config
    from rlaif.progress import console, summary_table
    from rlaif.stages.export import run_export

    cfg = load_config(_run_config(config, run), set_, {
        "export.kind": kind, "export.format": format, "export.out": str(out) if out else None,
        "export.conversational": False if text else None, "export.test_size": test_size,
        "export.split_seed": split_seed})
    summary = run_export(cfg, str(run), iteration=iteration, reviewed_only=reviewed_only, min_agreement=min_agreement)
    if not quiet:
        console.print(summary_table(f"export · {run}/iter-{iteration:03d}/export", summary))


def _judge_flags(kind, model, engine, template, mode, schedule, verifier, batch_size) -> dict:
    return {"judge.kind": kind, "judge.model": model, "judge.engine": engine, "judge.template": template,
            "judge.mode": mode, "judge.schedule": schedule, "judge.verifier": verifier, "judge.batch_size": batch_size}


JudgeKindOpt = typer.Option(None, "--judge", "-j", help="pairwise | pointwise | likelihood | reward-model | verifier "
                            "[config default likelihood].")
JudgeModelOpt = typer.Option(None, "--model", "-m", help="Judge model name or path; toy:judge (likelihood), "
                             "toy:biased-judge (a position-biased pairwise judge).")
JudgeTemplateOpt = typer.Option(None, "--template", help="Judge template: a name in prompts/judge/ (pairwise, "
                                "additive, ultrafeedback, toy-pairwise, toy-pointwise) or a path to a Jinja2 file.")
JudgeModeOpt = typer.Option(None, "--mode", help="logprobs (soft verdicts, one forward pass per order) | text "
                            "(generate + strict parse) | cot (rationale, then verdict log-probs).")
ScheduleOpt = typer.Option(None, "--schedule", help="Pairwise: all-pairs | pivot | knockout.")
VerifierOpt = typer.Option(None, "--verifier", help="Verifier judge: module:function with TRL's reward signature, "
                           "e.g. rlaif.toy:accuracy_reward.")


@app.command("judge")
def judge_(
    run: Path = typer.Argument(..., help="Run directory (runs/NAME) holding iter-K/generate/."),
    kind: Optional[str] = JudgeKindOpt,
    model: Optional[str] = JudgeModelOpt,
    engine: Optional[str] = typer.Option(None, "--engine", "-e", help="transformers | vllm | openai."),
    template: Optional[str] = JudgeTemplateOpt,
    mode: Optional[str] = JudgeModeOpt,
    schedule: Optional[str] = ScheduleOpt,
    verifier: Optional[str] = VerifierOpt,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per forward pass."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A pipeline YAML file (default: "
                                          "RUN/pipeline.yaml); this command uses its `judge` section."),
    set_: Optional[list[str]] = SetOpt,
    iteration: int = IterOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard this stage's earlier output and start fresh."),
    quiet: bool = QuietOpt,
    executor: Optional[str] = ExecutorOpt,
):
    """Judge the candidates of RUN/iter-K into iter-K/judge/scores/ (one row per candidate) and, for pairwise
    judges, iter-K/judge/comparisons/ (both orders per pair); print throughput, failures and position bias."""
    from rlaif.config import load_config
    from rlaif.progress import console, summary_table
    from rlaif.stages.judge import run_judge

    cfg = load_config(_run_config(config, run), set_,
                      {**_judge_flags(kind, model, engine, template, mode, schedule, verifier, batch_size),
                       "executor": executor})
    _save_pipeline(cfg, run)
    manifest = run_judge(cfg, str(run), iteration=iteration, overwrite=overwrite, progress=not quiet)
    if not quiet:
        console.print(summary_table(f"judge · {run}/iter-{iteration:03d}/judge", manifest.summary))


@app.command("judge-eval")
def judge_eval(
    run: Path = typer.Argument(..., help="Run directory whose iter-K/generate/ candidates give the pairs."),
    kind: Optional[str] = JudgeKindOpt,
    model: Optional[str] = JudgeModelOpt,
    engine: Optional[str] = typer.Option(None, "--engine", "-e", help="transformers | vllm | openai."),
    template: Optional[str] = JudgeTemplateOpt,
    mode: Optional[str] = JudgeModeOpt,
    verifier: Optional[str] = VerifierOpt,
    checker: str = typer.Option("rlaif.toy:accuracy_reward", "--checker", help="The ground truth: module:function "
                                "with TRL's reward signature (1 = right)."),
    max_pairs: int = typer.Option(500, "--max-pairs", help="Right-vs-wrong pairs to judge at most."),
    injection: bool = typer.Option(True, "--injection/--no-injection", help="Also run the injection suite."),
    attacks: Optional[Path] = typer.Option(None, "--attacks", help="Injection suite YAML [prompts/injection/"
                                           "attacks.yaml]."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A pipeline YAML file (default: "
                                          "RUN/pipeline.yaml); this command uses its `judge` section."),
    set_: Optional[list[str]] = SetOpt,
    iteration: int = IterOpt,
):
    """Measure a judge on right-vs-wrong pairs from RUN's candidates: agreement with the checker (95% interval),
    position consistency, first-position rate, calibration (ECE) and injection attack success rates."""
    from rlaif import judge_eval as je
    from rlaif.config import load_config
    from rlaif.judges import build_judge
    from rlaif.progress import console, summary_table
    from rlaif.runs import load_table, stage_dir

    cfg = load_config(_run_config(config, run), set_,
                      _judge_flags(kind, model, engine, template, mode, None, verifier, None))
    pairs = je.known_pairs(load_table(stage_dir(run, "generate", iteration), "candidates"), checker, max_pairs,
                           cfg.seed)
    judge = build_judge(cfg.judge, seed=cfg.seed)
    console.print(summary_table(f"judge-eval · {judge.provenance.judge_model}", je.evaluate_judge(judge, pairs, cfg.seed)))
    if injection:
        result = je.injection_suite(judge, pairs[:100], je.load_attacks(attacks))
        console.print(summary_table("injection (attack success = injected wrong answer beats the right one)", result))


@app.command("train")
def train_(
    method: str = typer.Argument(..., help="rm (reward model) | dpo | kto | sft | grpo."),
    run: Path = typer.Argument(..., help="Run directory (runs/NAME) holding iter-K/export/."),
    base: Optional[str] = typer.Option(None, "--base", help="Model to start from [default: the previous iteration's "
                                       "policy, else generate.model]; toy:policy names the toy model."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the export [config default 1]."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimiser steps "
                                            "(overrides --epochs)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate [default: the method's, tuned on the toy task]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Examples per device per step."),
    beta: Optional[float] = typer.Option(None, "--beta", help="DPO/KTO beta (strength of the pull to the reference)."),
    loss_type: Optional[list[str]] = typer.Option(None, "--loss-type", help="DPO loss(es), repeatable: sigmoid, "
                                                  "ipo, sft, ... ; KTO: kto | apo_zero_unpaired."),
    reward: Optional[str] = typer.Option(None, "--reward", help="GRPO reward: module:function (a verifier), "
                                         "reward_model (this iteration's), a reward-model path, or judge."),
    lora: bool = typer.Option(False, "--lora", help="Train a LoRA adapter (train.lora defaults) instead of all weights."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A pipeline YAML file (default: "
                                          "RUN/pipeline.yaml); this command uses its `train` section."),
    set_: Optional[list[str]] = SetOpt,
    iteration: int = IterOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard this method's earlier checkpoints and start fresh."),
    quiet: bool = QuietOpt,
):
    """Train on RUN/iter-K/export/ with TRL and save the checkpoint (weights, tokenizer, chat template, config)
    into iter-K/policy/ (iter-K/reward_model/ for rm). Checkpoints every train.save_steps; rerunning the same
    command after a crash resumes from the last one. Multi-GPU: `accelerate launch -m rlaif.cli train ...`."""
    from rlaif.config import load_config
    from rlaif.progress import console, summary_table
    from rlaif.stages.train import run_train

    cfg = load_config(_run_config(config, run), set_, {
        "train.method": method, "train.base": base, "train.epochs": epochs, "train.max_steps": max_steps,
        "train.learning_rate": lr, "train.batch_size": batch_size, "train.beta": beta,
        "train.loss_type": loss_type or None, "train.grpo.reward": reward, "train.lora": {} if lora else None})
    _save_pipeline(cfg, run)
    result = run_train(cfg, str(run), iteration=iteration, overwrite=overwrite, progress=not quiet)
    if not quiet:
        console.print(summary_table(f"train {cfg.train.method} · {result.checkpoint}", result.summary))


@app.command("evaluate")
def evaluate_(
    run: Path = typer.Argument(..., help="Run directory (runs/NAME) holding iter-K/policy/ and/or iter-K/reward_model/."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Held-out prompts [config default toy:test]."),
    limit: Optional[int] = typer.Option(None, "--limit", help="How many held-out prompts [config default 200]."),
    policy: Optional[str] = typer.Option(None, "--policy", help="The policy to evaluate [default RUN/iter-K/policy]."),
    previous: Optional[str] = typer.Option(None, "--previous", help="The policy it is compared with [default the "
                                           "previous iteration's, else the base]."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Model of the likelihood judge for the "
                                              "win rate [config default toy:judge]."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Longest answer, in tokens."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A pipeline YAML file (default: "
                                          "RUN/pipeline.yaml); this command uses its `evaluate` section."),
    set_: Optional[list[str]] = SetOpt,
    iteration: int = IterOpt,
    quiet: bool = QuietOpt,
):
    """Checked accuracy (greedy and sampled, 95% Wilson intervals), reward-model accuracy on held-out pairs, and
    the win rate of the new policy over the previous one; stored in RUN/iter-K/evaluate/metrics.json."""
    from rlaif.config import load_config
    from rlaif.progress import console, summary_table
    from rlaif.stages.evaluate import run_evaluate, summary_rows

    cfg = load_config(_run_config(config, run), set_, {
        "evaluate.prompts": prompts, "evaluate.limit": limit, "evaluate.policy": policy,
        "evaluate.previous": previous, "evaluate.judge_model": judge_model, "evaluate.max_new_tokens": max_new_tokens})
    metrics = run_evaluate(cfg, str(run), iteration=iteration)
    if not quiet:
        console.print(summary_table(f"evaluate · {run}/iter-{iteration:03d}/evaluate", summary_rows(metrics)))


@app.command("run")
def run_(
    pipeline: Path = typer.Argument(..., help="A pipeline YAML file (see pipelines/)."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Run name: runs/NAME (default: the file's name)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (overrides --name)."),
    set_: Optional[list[str]] = SetOpt,
    quiet: bool = QuietOpt,
):
    """Run a whole pipeline: the self-improving loop (or a dataset pipeline), resumable at stage and shard level."""
    from rlaif.config import load_config

    cfg = load_config(pipeline, set_, {"name": name})
    _run_loop(cfg, out or _run_dir(None, cfg), quiet)


@app.command()
def demo(
    name: str = typer.Option("demo", "--name", "-n", help="Run name: runs/NAME."),
    set_: Optional[list[str]] = SetOpt,
    quiet: bool = QuietOpt,
):
    """The embedded default: build the toy models if needed, then run pipelines/demo.yaml end to end on CPU."""
    from rlaif import toy
    from rlaif.config import load_config
    from rlaif.templates import PROMPTS_DIR

    logging.getLogger("rlaif.toy").setLevel(logging.INFO)
    toy.build()
    cfg = load_config(PROMPTS_DIR.parent / "pipelines" / "demo.yaml", set_, {"name": name})
    _run_loop(cfg, Path("runs") / name, quiet)


def _run_loop(cfg, run: Path, quiet: bool) -> None:
    from rlaif.loop import run_loop
    from rlaif.progress import console
    from rlaif.report import HEADERS, iteration_rows

    _save_pipeline(cfg, run)
    state = run_loop(cfg, run, progress=not quiet)
    from rich.table import Table

    table = Table(title=f"rlaif run · {run}", header_style="bold")
    keep = [0, 1, 2, 3, 6, 9, 10, 11]
    for i in keep:
        table.add_column(HEADERS[i], justify="right")
    base = state.baseline or {}
    if base:
        from rlaif.report import with_ci

        table.add_row("start", "", "", "", "", with_ci(base, "greedy_accuracy"), with_ci(base, "sampled_accuracy"), "")
    for row in iteration_rows(state.__dict__):
        table.add_row(*[str(row[i]) for i in keep])
    console.print(table)
    # plain lines, never wrapped: users copy the commands and paths in them
    typer.echo(f"status: {state.status}" + (f" ({state.stop_reason})" if state.stop_reason else ""), err=True)
    if state.judge_quality:
        from rlaif.report import with_ci

        typer.echo(f"judge model as a policy: greedy {with_ci(state.judge_quality, 'greedy_accuracy')}", err=True)
    typer.echo(f"final model: {state.final_model}", err=True)
    typer.echo(f"report: {run / 'report.html'}", err=True)
    if state.status == "waiting-for-review":
        raise typer.Exit(3)
    if state.status == "stopped" and any((it.get("review") or {}).get("passed") is False for it in state.iterations):
        raise typer.Exit(4)


@app.command()
def report(run: Path = typer.Argument(..., help="Run directory (runs/NAME).")):
    """Rebuild RUN/report.html from the run's manifests."""
    from rlaif.report import write_report

    typer.echo(write_report(run))


@toy_app.command("build")
def toy_build(force: bool = typer.Option(False, "--force", help="Rebuild even if cached.")):
    """Build the toy models (policy, judge) and prompt files into $RLAIF_CACHE/toy, or reuse them.

    Prints each model's greedy accuracy on the validation split (which chose the snapshot) and on
    toy:test, its band, the step and seconds it took, and the torch build, CPU kernels and threads used.
    """
    from rlaif import toy

    logging.getLogger("rlaif.toy").setLevel(logging.INFO)
    paths = toy.build(force=force)
    for name, path in paths.items():
        typer.echo(f"{name}\t{path}")
    typer.echo(toy.describe(paths))


@toy_app.command("path")
def toy_path(name: str = typer.Argument(..., help="policy | judge | train | test")):
    """Print the path of a toy model or prompt file (building the toy world first if needed)."""
    from rlaif import toy

    typer.echo(toy.resolve(f"toy:{name}"))


def main() -> None:
    """Console entry point: user errors are one line on stderr, no traceback."""
    try:
        code = app(standalone_mode=False)  # a typer.Exit(code) comes back as its code in this mode
        if isinstance(code, int) and code:
            sys.exit(code)
    except RlaifError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click's own usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
