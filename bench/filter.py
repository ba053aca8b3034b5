"""Benchmark: filter + dedup throughput (rows/s) and peak RSS at 10k and 100k synthetic judged candidates.

Each size runs in a fresh subprocess (so peak RSS is its own), twice: with deduplication (the
default filter) and without (the baseline of the same run; the ratio is the cost of dedup). The
near-duplicate index's own size per 10k rows is measured separately (RSS growth while indexing the
prompts of 10k rows alone). Writes bench/results/filter.json.

    .venv/bin/python bench/filter.py [--sizes 10000 100000] [--n 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [f"w{i}" for i in range(5000)]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_run(run: Path, rows: int, n: int, shard_prompts: int = 256) -> None:
    """A finished judge stage with `rows` candidates (n per prompt), 2% of prompts near-duplicates of others."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_filter import cand, scores_ds

    from rlaif.runs import StageWriter, stage_dir

    rng = random.Random(0)
    prompts = rows // n
    num_shards = -(-prompts // shard_prompts)
    writer = StageWriter(stage_dir(run, "judge"), stage="judge", config_hash="bench", input_fingerprint="bench",
                         config={}, num_shards=num_shards, shard_size=shard_prompts)
    texts: list[str] = []
    for s in range(num_shards):
        out = []
        for p in range(s * shard_prompts, min((s + 1) * shard_prompts, prompts)):
            if texts and rng.random() < 0.02:
                q = rng.choice(texts).replace("w", "W", 1)  # a near-duplicate (one small edit)
            else:
                q = _text(rng, 25)
            texts.append(q)
            for k in range(n):
                out.append(cand(f"p{p}", k, _text(rng, 40), rng.random(), question=q))
        writer.write_shard(s, {"scores": scores_ds(out)}, 0.0)
    writer.finish({})


def child(run: str, dedup: bool) -> None:
    from rlaif.config import PipelineConfig
    from rlaif.stages.filter import run_filter

    cfg = PipelineConfig.model_validate({"filter": {"dedup_prompts": dedup, "dedup_responses": dedup}})
    t0 = time.perf_counter()
    m = run_filter(cfg, run, overwrite=True, progress=False)
    seconds = time.perf_counter() - t0
    from peak_rss import high_water_mb  # this process's own high-water mark, not the parent's at the fork

    peak = high_water_mb()
    print(json.dumps({"seconds": seconds, "rows": m.summary["candidates"], "pairs": m.summary["pairs"],
                      "duplicate_prompts": m.summary.get("dropped.duplicate_prompt", 0), "peak_rss_mb": peak}))


def index_child(rows: int, n: int) -> None:
    """RSS growth of the near-duplicate index alone over the prompts of `rows` candidates."""
    import psutil

    from rlaif.dedup import NearDuplicateIndex

    rng = random.Random(1)
    texts = [_text(rng, 25) for _ in range(rows // n)]
    proc = psutil.Process()
    index = NearDuplicateIndex()
    before = proc.memory_info().rss
    index.add_many([f"p{i}" for i in range(len(texts))], texts)
    print(json.dumps({"index_mb": (proc.memory_info().rss - before) / 2**20, "prompts": len(index)}))


def _run(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--n", type=int, default=4, help="candidates per prompt")
    ap.add_argument("--child", nargs=2)
    ap.add_argument("--index", type=int)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], a.child[1] == "1")
    if a.index:
        return index_child(a.index, a.n)
    results = {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, {platform.python_version()}",
               "n": a.n, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in a.sizes:
            run = Path(tmp) / f"run-{size}"
            t0 = time.perf_counter()
            make_run(run, size, a.n)
            build = time.perf_counter() - t0
            base = _run("--child", str(run), "0")
            full = _run("--child", str(run), "1")
            results["sizes"][size] = {
                "build_s": round(build, 1),
                "rows_per_s_with_dedup": round(full["rows"] / full["seconds"]),
                "rows_per_s_without_dedup": round(base["rows"] / base["seconds"]),
                "dedup_slowdown_ratio": round(full["seconds"] / base["seconds"], 2),
                "peak_rss_mb_with_dedup": round(full["peak_rss_mb"]),
                "peak_rss_mb_without_dedup": round(base["peak_rss_mb"]),
                "pairs": full["pairs"], "duplicate_prompts": full["duplicate_prompts"],
            }
            print(json.dumps({size: results["sizes"][size]}), flush=True)
    idx = _run("--index", "10000", "--n", str(a.n))
    results["index_mb_per_10k_rows"] = round(idx["index_mb"], 2)
    sizes = sorted(results["sizes"])
    if len(sizes) > 1:
        lo, hi = results["sizes"][sizes[0]], results["sizes"][sizes[-1]]
        results["rss_ratio_without_dedup_largest_vs_smallest"] = round(
            hi["peak_rss_mb_without_dedup"] / lo["peak_rss_mb_without_dedup"], 3)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "filter.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
