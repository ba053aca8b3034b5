"""Command-line options derived from the config models: one table per command, flag -> config key.

A table maps option declarations (`"--input -i"`, `"--conversational/--text"`) to a dotted config
key (`generate.input`). Each option's help is the field's `description` (and its config default),
its type the field's annotation, and its default None: an option
that is not given leaves the pipeline file's value alone. `stage_options(table, ...)` adds the
options, and those several commands share (--config, --set, ...), to a typer command, which receives
them as one `StageOptions` (the given config options as `overrides`: {config key: value}).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from rich.markup import escape

from rlaif.config import PipelineConfig


def field_of(key: str) -> FieldInfo:
    """The config field a dotted key names (`train.grpo.reward`)."""
    model: type[BaseModel] = PipelineConfig
    *sections, name = key.split(".")
    for section in sections:
        model = model.model_fields[section].annotation
    return model.model_fields[name]


def _scalar(annotation):
    """The annotation without None (`int | None` -> int)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return options[0] if len(options) == 1 else str
    return annotation


def option_type(field: FieldInfo):
    """The type typer parses the option into: the field's, without None.

    A `Literal` is parsed as a string: the config then checks the choice, with an error that names the
    config key (`field 'judge.kind': got 'oracle'; input should be ...`), as for the pipeline file.
    """
    annotation = _scalar(field.annotation)
    return str if typing.get_origin(annotation) is Literal else annotation


def option_help(field: FieldInfo) -> str:
    """The field's description and its config default, escaped so that typer's rich help shows [...] as written."""
    text, default = field.description, field.default
    if not (default is PydanticUndefined or default is None or isinstance(default, (list, dict))):
        text += f" (config default: {str(default).lower() if isinstance(default, bool) else default})"
    return escape(text)


@dataclass
class StageOptions:
    """What a command was given besides its own arguments: the config, its overrides, where and how to run."""

    overrides: dict  # {config key: value} of the table's options that were given
    config: Path | None = None
    sets: list[str] | None = None
    iteration: int = 0
    overwrite: bool = False
    quiet: bool = False


# The options several commands share (none of them a config field), by StageOptions field.
SHARED = {
    "config": (Optional[Path], typer.Option(None, "--config", "-c", help="A pipeline YAML file; the command uses its "
                                            "own section (a command over a run reads RUN/pipeline.yaml by default).")),
    "sets": (Optional[list[str]], typer.Option(None, "--set", help="Override any config field: --set generate.n=8 "
                                               "(repeatable).")),
    "iteration": (int, typer.Option(0, "--iteration", "-k", help="Which iteration of the run directory (iter-K) to "
                                    "work on.")),
    "overwrite": (bool, typer.Option(False, "--overwrite", help="Discard this stage's earlier output (train: the "
                                     "method's checkpoints) and start fresh.")),
    "quiet": (bool, typer.Option(False, "--quiet", "-q", help="No progress bar or summary table.")),
}


def param_name(key: str) -> str:
    return "config__" + key.replace(".", "__")


def stage_options(table: dict[str, str], *shared: str):
    """Add one option per (declarations -> config key) of `table`, and the `shared` options, to a typer command.

    The command declares a keyword-only `opts: StageOptions` parameter and receives them there.
    """

    def decorate(command):
        own = inspect.signature(command, eval_str=True)
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=SHARED[name][0],
                                   default=SHARED[name][1]) for name in shared]
        for decls, key in table.items():
            field = field_of(key)
            option = typer.Option(None, *decls.split(), help=option_help(field), show_default=False)
            added.append(inspect.Parameter(param_name(key), inspect.Parameter.KEYWORD_ONLY, default=option,
                                           annotation=Optional[option_type(field)]))

        @functools.wraps(command, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
        def run(**given):
            overrides = {}
            for key in table.values():
                value = given.pop(param_name(key))
                overrides[key] = None if value in ((), []) else list(value) if isinstance(value, tuple) else value
            opts = StageOptions(overrides, **{name: given.pop(name) for name in shared})
            return command(**given, opts=opts)

        kept = [p for p in own.parameters.values() if p.name != "opts"]
        run.__signature__ = own.replace(parameters=[*kept, *added])
        run.config_table = table
        return run

    return decorate
