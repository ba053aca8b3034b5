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
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="Prepended as a system message."),
    template: Optional[str] = typer.Option(None, "--template", help="Generator template: a name in "
                                           "prompts/generate/ or a path to a Jinja2 file."),
    iteration: int = IterOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard this stage's earlier output and start fresh."),
    quiet: bool = QuietOpt,
):
    """Write N candidate responses per prompt into RUN/iter-K/generate/ (resumable Parquet shards)."""
    from rlaif.config import load_config
    from rlaif.progress import console, summary_table
    from rlaif.stages.generate import run_generate

    cfg = load_config(config, set_, {
        "generate.input": input, "generate.model": model, "generate.n": n, "generate.engine": engine,
        "generate.batch_size": batch_size, "generate.max_new_tokens": max_new_tokens,
        "generate.temperature": temperature, "generate.top_p": top_p, "generate.stop": stop or None, "seed": seed,
        "generate.shard_size": shard_size, "generate.prompt_column": prompt_column,
        "generate.system_prompt": system_prompt, "generate.template": template,
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


@toy_app.command("build")
def toy_build(force: bool = typer.Option(False, "--force", help="Rebuild even if cached.")):
    """Build the toy models (policy, judge) and prompt files into $RLAIF_CACHE/toy, or reuse them."""
    from rlaif import toy

    logging.getLogger("rlaif.toy").setLevel(logging.INFO)
    paths = toy.build(force=force)
    for name, path in paths.items():
        extra = ""
        if (path / "toy.json").exists():
            meta = toy.metadata_of(path)
            extra = f"  (step {meta['step']}, greedy accuracy {meta['greedy_accuracy_test500']:.2f} on 500 test prompts)"
        typer.echo(f"{name}\t{path}{extra}")


@toy_app.command("path")
def toy_path(name: str = typer.Argument(..., help="policy | judge | train | test")):
    """Print the path of a toy model or prompt file (building the toy world first if needed)."""
    from rlaif import toy

    typer.echo(toy.resolve(f"toy:{name}"))


def main() -> None:
    """Console entry point: user errors are one line on stderr, no traceback."""
    try:
        app(standalone_mode=False)
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
