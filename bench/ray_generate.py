"""Benchmark the Ray executor: the generate stage with the local executor, then 1 and 2 Ray replicas.

Same job each time (toy policy, `--prompts` toy prompts, n=4, sampled), in one process and one
Ray instance, so the numbers are ratios against the local baseline of the same run:
- rows/s over the whole stage (wall clock, what a user waits), local vs ray x1 vs ray x2;
- per-replica overhead: wall minus the replicas' own shard time (actor start, engine load,
  Ray Data scheduling, shipping shards as Arrow), and Ray's own start-up;
- the candidates of every run compared with the local run (they must be identical).

    .venv/bin/python bench/ray_generate.py [--prompts 512] [--shard-size 64] [--threads 1]

With `--engine vllm` on a GPU machine, each replica gets `--gpus-per-replica` GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_once(cfg, label: str) -> dict:
    from rlaif.runs import load_table, stage_dir
    from rlaif.stages.generate import run_generate

    run = tempfile.mkdtemp(prefix=f"ray-bench-{label}-")
    t0 = time.perf_counter()
    manifest = run_generate(cfg, run, progress=False)
    wall = time.perf_counter() - t0
    shard_seconds = sum(s.seconds for s in manifest.shards.values())
    rows = manifest.summary["candidates"]
    return {"label": label, "wall_s": round(wall, 2), "shard_seconds": round(shard_seconds, 2), "rows": rows,
            "rows_per_s": round(rows / wall, 1),
            "texts": load_table(stage_dir(run, "generate"), "candidates")["text"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, locally and in every replica")
    ap.add_argument("--engine", default="transformers")
    ap.add_argument("--model", default="toy:policy")
    ap.add_argument("--gpus-per-replica", type=float, default=0.0)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    args = ap.parse_args()

    import ray
    import torch

    from rlaif import toy
    from rlaif.config import load_config

    prompts = Path(tempfile.mkdtemp()) / "prompts.jsonl"
    prompts.write_text("\n".join(toy.build()["prompts-test"].read_text().splitlines()[:args.prompts]) + "\n")

    def cfg(executor: str, replicas: int = 1):
        return load_config(flags={
            "generate.input": str(prompts), "generate.model": args.model, "generate.engine": args.engine,
            "generate.n": 4, "generate.max_new_tokens": args.max_new_tokens, "generate.temperature": 1.0,
            "generate.shard_size": args.shard_size, "seed": 0, "executor": executor, "ray.replicas": replicas,
            "ray.num_cpus": 1, "ray.num_gpus": args.gpus_per_replica, "ray.torch_threads": args.threads})

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    from rlaif.engines import load_engine

    load_engine(cfg("local").generate).close()
    engine_load = time.perf_counter() - t0

    local = run_once(cfg("local"), "local")
    t0 = time.perf_counter()
    ray.init(num_cpus=max(os.cpu_count() or 1, 3), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    runs = [local] + [run_once(cfg("ray", r), f"ray x{r}") for r in (1, 2)]
    ray.shutdown()

    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
               "job": f"{args.prompts} prompts x 4 candidates, shard_size {args.shard_size}, {args.model} "
                      f"({args.engine}), max_new_tokens {args.max_new_tokens}, {args.threads} torch thread(s)",
               "engine_load_s_local": round(engine_load, 2), "ray_init_s": round(ray_start, 2), "runs": []}
    for r in runs:
        replicas = 1 if r["label"] == "local" else int(r["label"][-1])
        overhead = r["wall_s"] - r["shard_seconds"] / replicas
        results["runs"].append({k: r[k] for k in ("label", "wall_s", "shard_seconds", "rows", "rows_per_s")} | {
            "vs_local": round(r["rows_per_s"] / local["rows_per_s"], 2),
            "overhead_s": round(overhead, 2),
            "same_candidates_as_local": r["texts"] == local["texts"]})
    out = HERE / "results" / "ray_generate.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
