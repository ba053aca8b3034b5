"""Executors: where a stage's per-shard function runs. The stage itself never changes.

A stage hands an executor its unfinished shard indices, a way to read a shard's input, and two
plain functions:
    setup() -> state                        builds what a worker holds (an engine, a judge)
    work(state, index, shard) -> tables     computes one shard: {"candidates": Dataset, ...}
Every executor yields `(index, tables, seconds)` as shards finish, in any order; the driver
(`rlaif.runs.run_sharded`) writes each one with its `StageWriter`, so the run directory (layout,
shard names, manifest, resume) is the same whichever executor computed it.

- `local` (default): one process, shards in order (`rlaif.scale.local`).
- `ray`: Ray Data `map_batches` over a pool of engine replicas, one actor each (`rlaif.scale.ray`);
  needs `pip install 'rlaif[ray]'`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import datasets

from rlaif.scale.local import map_shards_locally
from rlaif.scale.ray import map_shards_on_ray

ShardResult = tuple[int, dict[str, datasets.Dataset], float]


def map_shards(executor: str, todo: list[int], shard_input: Callable[[int], datasets.Dataset], *,
               work: Callable[[Any, int, datasets.Dataset], dict[str, datasets.Dataset]],
               setup: Callable[[], Any], teardown: Callable[[Any], None] | None = None,
               ray_config=None) -> Iterator[ShardResult]:
    """Run `work` over the shards `todo` on `executor` (`local` | `ray`), yielding results as they finish.

    `setup()` builds the worker state (once here, or once per replica); `teardown(state)` closes it
    (None: the state is borrowed, e.g. an engine the caller owns). `setup` and `work` must be
    picklable for `ray` (module-level functions, `functools.partial`).
    """
    if not todo:
        return iter(())
    if executor == "ray":
        return map_shards_on_ray(todo, shard_input, work=work, setup=setup, teardown=teardown, config=ray_config)
    return map_shards_locally(todo, shard_input, work=work, setup=setup, teardown=teardown)
