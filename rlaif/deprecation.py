"""Old import paths of moved modules: each still works for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType


def moved(old: str, new: str) -> ModuleType:
    """Warn that `old` moved to `new` and return the new module (an old module installs it in its place)."""
    warnings.warn(f"{old} moved to {new}; the old path goes in the next release", DeprecationWarning, stacklevel=3)
    return importlib.import_module(new)
