"""The Ray executor: a stage's shards as one Ray Data job over a pool of engine replicas.

Each unfinished shard becomes one row of a Ray dataset (its index, and its input rows as Arrow IPC
bytes, which keep the `datasets` features exactly). `map_batches` with an `ActorPoolStrategy`
hands one shard at a time to a free replica: an actor that built its engine once (`setup()`) and
runs the stage's own per-shard function (`work`). The replica sends the shard's tables back as
Arrow IPC bytes and the driver writes them with the stage's `StageWriter`, so the run directory
is byte for byte what the local executor writes, and the driver is the only writer (no races on
shared storage, nothing half-written by a dying replica).

Faults: Ray Data creates the replicas with `max_restarts=-1, max_task_retries=-1`, so a replica
that dies mid-shard is restarted and its shard retried; the driver writes a shard once even if a
retry reports it twice. Killing the driver loses at most the shards in flight; a rerun skips the
finished ones, as locally. Seeding is per shard (seed + shard index), never per replica, so which
replica computed a shard does not change it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import datasets
import pyarrow as pa

from rlaif import errors
from rlaif.config import RayConfig
from rlaif.errors import ConfigError, RlaifError, RunError

log = logging.getLogger(__name__)

TABLE_PREFIX = "table:"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError("executor 'ray' needs Ray Data: pip install 'rlaif[ray]' (or pip install 'ray[data]'); "
                          "or use --executor local") from None
    return ray


def local_cpus(config) -> int:
    """Logical CPUs for a locally started instance: room for every replica plus Ray Data's own tasks.

    With exactly as many CPUs as replicas the replicas hold them all and Ray Data's tasks never
    get scheduled (a deadlock measured on 2 cores), hence the + 1.
    """
    if config.local_cpus:
        return config.local_cpus
    return max(os.cpu_count() or 1, math.ceil(config.replicas * config.num_cpus) + 1)


def connect(config) -> None:
    """Join `ray.address` / RAY_ADDRESS if given, else start a local instance (once per process)."""
    ray = import_ray()
    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS")
    t0 = time.perf_counter()
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=local_cpus(config), include_dashboard=False, log_to_driver=False)
    log.info("ray: connected to %s in %.1f s", address or "a new local instance", time.perf_counter() - t0)


def to_ipc(table: datasets.Dataset | pa.Table) -> bytes:
    table = table.data.table if isinstance(table, datasets.Dataset) else table
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(payload: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()


class ShardReplica:
    """One engine replica (a Ray actor): builds its state once, then computes one shard per call.

    A user error (bad config, a model that does not load) comes back as a row naming it, so the
    driver raises it as the same one-line error a local run gives; Ray would otherwise restart
    the actor forever or bury the message in its own tracebacks.
    """

    def __init__(self, setup: Callable[[], Any], work: Callable, torch_threads: int | None):
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        t0 = time.perf_counter()
        self.state, self.error = None, None
        try:
            self.state = setup()
        except RlaifError as e:
            self.error = e
        self.work = work
        log.info("replica pid %d ready in %.1f s", os.getpid(), time.perf_counter() - t0)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for index, payload in zip(batch["shard"].to_pylist(), batch["input"].to_pylist()):
            row = {"shard": index, "seconds": 0.0, "pid": os.getpid(), "error_type": None, "error": None}
            try:
                if self.error is not None:
                    raise self.error
                shard = datasets.Dataset(from_ipc(payload))
                t0 = time.perf_counter()
                tables = self.work(self.state, index, shard)
                row["seconds"] = time.perf_counter() - t0
                row.update({TABLE_PREFIX + name: to_ipc(t) for name, t in tables.items()})
            except RlaifError as e:
                row.update(error_type=type(e).__name__, error=str(e))
            rows.append(row)
        return pa.Table.from_pylist(rows)


def map_shards_on_ray(todo: list[int], shard_input: Callable[[int], datasets.Dataset], *, work: Callable,
                      setup: Callable[[], Any], teardown: Callable[[Any], None] | None = None,
                      config=None) -> Iterator[tuple[int, dict[str, datasets.Dataset], float]]:
    """Yield `(index, tables, seconds)` as replicas finish shards (any order); every shard exactly once.

    `teardown` is not needed here: a replica's engine goes with its actor process.
    """
    if config is None:
        config = RayConfig()
    ray = import_ray()
    connect(config)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the stage shows its own progress
    logging.getLogger("ray.data").setLevel(logging.INFO if log.isEnabledFor(logging.INFO) else logging.ERROR)

    items = [{"shard": i, "input": to_ipc(shard_input(i))} for i in todo]
    replicas = min(config.replicas, len(todo))
    resources: dict[str, float] = {"num_cpus": config.num_cpus}
    if config.num_gpus:
        resources["num_gpus"] = config.num_gpus
    threads = config.torch_threads or max(1, int(config.num_cpus))
    results = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ShardReplica,
        fn_constructor_kwargs={"setup": setup, "work": work, "torch_threads": threads},
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=replicas),
        **resources,
    )
    log.info("ray: %d shards over %d replicas (%s per replica, %d torch threads)", len(todo), replicas, resources,
             threads)
    seen: set[int] = set()
    for row in results.iter_rows():
        index = int(row["shard"])
        if row.get("error") is not None:
            raise getattr(errors, row["error_type"], RunError)(f"on a Ray replica: {row['error']}")
        if index in seen:  # a retried task reported a shard again: it was already written
            log.warning("ray: shard %d reported twice; kept the first", index)
            continue
        seen.add(index)
        tables = {k[len(TABLE_PREFIX):]: datasets.Dataset(from_ipc(v)) for k, v in row.items()
                  if k.startswith(TABLE_PREFIX)}
        yield index, tables, float(row["seconds"])
    missing = sorted(set(todo) - seen)
    if missing:
        raise RunError(f"ray: the job ended without shards {missing[:5]}; rerun to compute them")
