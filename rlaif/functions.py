"""`module:function` specs from a pipeline file (verifiers, rewards, checkers) -> the function.

One loader for every field that names user code, so each gives the same one-line error naming the
field: a spec that is not `module:function`, a module that does not import, a missing or
non-callable name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from rlaif.errors import ConfigError


def load_function(spec: str | None, field: str) -> Callable:
    """`package.module:function` -> the function; `field` names the config key in errors."""
    module_name, _, name = (spec or "").partition(":")
    if not module_name or not name:
        raise ConfigError(f"field '{field}': expected module:function (e.g. mypackage.rewards:exact_match), "
                          f"got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"field '{field}': cannot import {module_name!r}: {e}") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise ConfigError(f"field '{field}': module {module_name!r} has no function {name!r}")
    if not callable(fn):
        raise ConfigError(f"field '{field}': {spec} is not callable")
    return fn
