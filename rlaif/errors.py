"""One exception type per kind of user error.

The CLI prints these as a single line (no traceback): each message names the file, the
line/record or field, and what was expected.
"""


class RlaifError(Exception):
    """A mistake the user can fix; shown without a traceback."""


class ConfigError(RlaifError):
    """A pipeline file, a --set override or a flag is invalid."""


class InputError(RlaifError):
    """An input file (prompts, a dataset) is unreadable or malformed."""


class EngineError(RlaifError):
    """A model or server cannot be loaded or does not support what was asked."""


class RunError(RlaifError):
    """A run directory is in a state that forbids the operation (e.g. a changed config on resume)."""


class StageFailedError(RlaifError):
    """A stage ran, but too many of its rows failed (e.g. a server outage); the CLI exits with code 5."""

    exit_code = 5
