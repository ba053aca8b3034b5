"""The command line: every command's options against the config fields it sets, and complete --help."""

from __future__ import annotations

import typing

import pytest
import typer
from typer.core import TyperArgument, TyperGroup, TyperOption
from typer.testing import CliRunner

from rlaif import cli
from rlaif.cli_options import field_of, option_type

COMMAND = typer.main.get_command(cli.app)
# The options of each command that are not config fields: what the command itself does (where it writes,
# which config and iteration, whether to start fresh). Everything else comes from the command's table.
OWN = {
    "generate": {"--out", "--config", "--set", "--iteration", "--overwrite", "--quiet"},
    "review": {"--iteration", "--host", "--port", "--reviewer", "--reviewers", "--stats", "--simulate", "--gate", "--config", "--set",
               "--quiet"},
    "filter": {"--config", "--set", "--iteration", "--overwrite", "--quiet"},
    "export": {"--reviewed-only", "--min-agreement", "--config", "--set", "--iteration", "--quiet"},
    "judge": {"--config", "--set", "--iteration", "--overwrite", "--quiet"},
    "judge-eval": {"--pairs", "--checker", "--write-pairs", "--fit-calibration", "--out", "--max-pairs", "--injection",
                   "--attacks", "--min-margin", "--attack-pairs", "--held-out-categories", "--config", "--set",
                   "--iteration"},
    "train": {"--lora", "--config", "--set", "--iteration", "--overwrite", "--quiet"},
    "evaluate": {"--config", "--set", "--iteration", "--quiet"},
    "run": {"--out", "--set", "--quiet"},
    "demo": {"--name", "--set", "--quiet"},
    "report": set(),
    "compare": {"--out"},
    "verify": set(),
    "ledger": {"--explain"},
    "serve": {"--against", "--host", "--port", "--max-batch-size", "--max-wait-ms", "--label-column", "--log",
              "--config", "--set"},
    "toy build": {"--force"},
    "toy path": set(),
    "smollm2 build-judge": {"--set", "--quiet"},
    "smollm2 path": set(),
}


def commands(group: TyperGroup = COMMAND, prefix: str = ""):
    for name, command in group.commands.items():
        if isinstance(command, TyperGroup):
            yield from commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


ALL = dict(commands())


def options(command) -> dict[str, TyperOption]:
    return {p.opts[0]: p for p in command.params if isinstance(p, TyperOption) and p.opts[0] != "--help"}


def table_of(command) -> dict[str, str]:
    return getattr(command.callback, "config_table", {})


def test_every_command_is_listed():
    assert set(ALL) == set(OWN)


@pytest.mark.parametrize("name", sorted(OWN))
def test_options_are_the_command_own_plus_the_config_fields_it_sets(name):
    command = ALL[name]
    table = table_of(command)
    from_table = {decls.split()[0].split("/")[0]: key for decls, key in table.items()}
    assert set(options(command)) == OWN[name] | set(from_table)
    for flag, key in from_table.items():
        field, option = field_of(key), options(command)[flag]
        assert option.help.replace("\\[", "[").startswith(field.description), f"{name} {flag}: not {key}'s description"
        assert option.default is None, f"{name} {flag}: an option not given must leave {key} to the config"
        # the option parses into the field's own type: a choice of a Literal's values, a list, a number, a flag
        assert option.type_descriptor.annotation == option_type(field), f"{name} {flag}: not {key}'s type"
        assert option.is_flag == (option_type(field) is bool) and option.multiple == (
            typing.get_origin(option_type(field)) is list), f"{name} {flag}"


@pytest.mark.parametrize("name", sorted(OWN))
def test_help_is_complete(name):
    command = ALL[name]
    assert command.help and command.help.strip(), f"{name} has no help"
    for param in command.params:
        if isinstance(param, (TyperOption, TyperArgument)) and param.name != "help":
            assert (getattr(param, "help", None) or "").strip(), f"{name}: {param.name} has no help"
    shown = CliRunner().invoke(cli.app, [*name.split(), "--help"], env={"COLUMNS": "240"})
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.replace("│", " ").split())
    for flag, option in options(command).items():
        assert flag in text, f"{name} --help does not show {flag}"
        # rich reads [...] as markup and drops it: every word of the help must reach the screen
        assert " ".join(option.help.replace("\\[", "[").split()) in text, f"{name} {flag}: help shown incompletely"


def test_a_config_default_is_shown_with_the_option():
    shown = CliRunner().invoke(cli.app, ["generate", "--help"], env={"COLUMNS": "240"}).output
    assert "Candidates per prompt. (config default: 4)" in " ".join(shown.split())
