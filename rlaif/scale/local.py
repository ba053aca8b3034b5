"""The local executor: every shard in this process, in order, with one worker state."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import datasets


def map_shards_locally(todo: list[int], shard_input: Callable[[int], datasets.Dataset], *,
                       work: Callable[[Any, int, datasets.Dataset], dict[str, datasets.Dataset]],
                       setup: Callable[[], Any],
                       teardown: Callable[[Any], None] | None = None) -> Iterator[tuple[int, dict, float]]:
    """Yield `(index, tables, seconds)` per shard, with one state built by `setup` and closed by `teardown`."""
    state = setup()
    try:
        for index in todo:
            shard = shard_input(index)
            t0 = time.perf_counter()
            tables = work(state, index, shard)
            yield index, tables, time.perf_counter() - t0
    finally:
        if teardown is not None:
            teardown(state)
