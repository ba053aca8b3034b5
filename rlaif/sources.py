"""Model and data sources by scheme: `toy:policy`, `smollm2:135m-instruct`, `tasks:ifeval-lite:train`.

A name `scheme:rest` whose scheme is registered in the `rlaif.sources` entry-point group resolves
to a local path through that scheme's resolver; every other name (a hub id, a path) is returned
unchanged. Resolvers are found through package metadata and imported on first use, so the library
never imports the toy world, and a model package is only needed by the runs that name it. A
third-party package adds a scheme by declaring an entry point in the same group:

    [project.entry-points."rlaif.sources"]
    mymodels = "mypackage.sources:resolve"     # resolve(name: str) -> str (a local path)
"""

from __future__ import annotations

import functools
import os
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from rlaif.errors import ConfigError

GROUP = "rlaif.sources"


def cache_root() -> Path:
    """Where built and converted sources live: $RLAIF_CACHE, else ~/.cache/rlaif."""
    return Path(os.environ.get("RLAIF_CACHE", Path.home() / ".cache" / "rlaif"))


@functools.cache
def schemes() -> dict[str, EntryPoint]:
    """The registered schemes, by name."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def scheme_of(name: str | None) -> str | None:
    """The registered scheme a name uses (`toy` for `toy:judge`), else None."""
    if not name:
        return None
    head, sep, _ = name.partition(":")
    return head if sep and head in schemes() else None


@functools.cache
def _resolver(scheme: str):
    entry = schemes()[scheme]
    try:
        return entry.load()
    except ImportError as e:
        raise ConfigError(f"source scheme {scheme!r} ({entry.value}) cannot be loaded: {e}") from None


def resolve(name: str | None, field: str = "model") -> str:
    """A local path for a registered `scheme:` name; any other name unchanged. `field` names the config key."""
    if not name:
        raise ConfigError(f"field '{field}' is required: a model or data name, or a path")
    scheme = scheme_of(name)
    if scheme is None:
        return name
    try:
        return str(_resolver(scheme)(name))
    except ConfigError as e:
        raise ConfigError(f"field '{field}': {e}") from None
