"""Robustness of the toy world: build it for several seeds x CPU kernels x torch thread counts.

Floating-point detail moves a training run; the toy recipe trains toward behaviour so that every
build lands in its bands anyway. This builds the world once per cell, each in a fresh subprocess
with its own throwaway cache (`ATEN_CPU_CAPABILITY` picks torch's kernels, `OMP_NUM_THREADS` its
threads; a CPU without AVX-512 falls back, so the capability column is the one torch reports using),
then prints one row per build and whether every accuracy is inside its band. Idle OpenMP threads
sleep rather than spin (`OMP_WAIT_POLICY=PASSIVE`, unless set): the same arithmetic, and on a CPU
shared with other work, 2-thread builds ten times faster. Rerunning with the same
--cache reuses finished cells. Writes bench/results/toy_worlds.json.

    .venv/bin/python bench/toy_worlds.py [--seeds 0 1 2 3 4] [--kernels default avx2 avx512] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rlaif import toy  # noqa: E402  (light: torch is imported by the builds, in their subprocesses)

BUILD = ("import sys; from rlaif import toy; "
         "toy.build(toy.ToyRecipe(seed=int(sys.argv[1])), progress=False)")


def cell_cache(cache: Path, kernel: str, threads: int) -> Path:
    return cache / f"{kernel}-t{threads}"


def build_cell(cache: Path, seed: int, kernel: str, threads: int) -> dict:
    """Build one world in a subprocess (kernels and threads are fixed when torch starts); its metadata."""
    env = {**os.environ, "RLAIF_CACHE": str(cell_cache(cache, kernel, threads)), "OMP_NUM_THREADS": str(threads),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    env.pop("ATEN_CPU_CAPABILITY", None)
    if kernel != "default":
        env["ATEN_CPU_CAPABILITY"] = kernel
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", BUILD, str(seed)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"seed": seed, "kernel": kernel, "threads_asked": threads, "error": proc.stderr.strip().splitlines()[-1]}
    root = cell_cache(cache, kernel, threads) / "toy" / toy.toy_dir(toy.ToyRecipe(seed=seed)).name
    policy = json.loads((root / "policy" / "toy.json").read_text())
    judge = json.loads((root / "judge" / "toy.json").read_text())
    biased = json.loads((root / "biased-judge" / "toy.json").read_text())
    return {"seed": seed, "kernel": kernel, "threads_asked": threads, "world": root.name,
            "cpu_capability": judge["cpu_capability"], "threads": judge["threads"], "torch": judge["torch"],
            "policy": {k: policy[k] for k in ("step", "validation", "test", "band", "seconds")},
            "judge": {k: judge[k] for k in ("step", "validation", "test", "band", "seconds")},
            "biased_first_slot_rate": biased["first_slot_rate"], "build_wall_s": round(wall, 1)}


def in_band(row: dict) -> bool:
    if "error" in row:
        return False
    ok = all(row[m]["band"][0] <= row[m][split]["greedy_accuracy"] <= row[m]["band"][1]
             for m in ("policy", "judge") for split in ("validation", "test"))
    return ok and row["biased_first_slot_rate"] >= toy.BIASED_FIRST_SLOT_MIN


def table(rows: list[dict]) -> str:
    head = ("| seed | kernels asked | capability used | threads | policy val / test | judge val / test | "
            "policy step | judge step | seconds | in band |")
    lines = [head, "|---" * 10 + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['seed']} | {r['kernel']} | | {r['threads_asked']} | {r['error']} | | | | | no |")
            continue
        p, j = r["policy"], r["judge"]
        lines.append(f"| {r['seed']} | {r['kernel']} | {r['cpu_capability']} | {r['threads']} | "
                     f"{p['validation']['greedy_accuracy']:.3f} / {p['test']['greedy_accuracy']:.3f} | "
                     f"{j['validation']['greedy_accuracy']:.3f} / {j['test']['greedy_accuracy']:.3f} | "
                     f"{p['step']} | {j['step']} | {j['seconds']:.0f} | {'yes' if in_band(r) else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--kernels", nargs="+", default=["default", "avx2", "avx512"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--jobs", type=int, default=1, help="Builds at once (each its own process; their seconds "
                    "then include waiting for each other).")
    ap.add_argument("--cache", type=Path, default=None, help="Throwaway cache for the builds (default: a temp dir).")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "toy_worlds.json")
    args = ap.parse_args()
    cache = args.cache or Path(tempfile.mkdtemp(prefix="toy-worlds-"))
    cells = [(s, k, t) for s in args.seeds for k in args.kernels for t in args.threads]
    rows: list[dict] = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(build_cell, cache, *cell): cell for cell in cells}
        for future in as_completed(futures):
            rows.append(future.result())
            seed, kernel, threads = futures[future]
            done = time.perf_counter() - t0
            print(f"[{len(rows)}/{len(cells)}] seed {seed} {kernel} t{threads}: "
                  f"{'in band' if in_band(rows[-1]) else 'OUT OF BAND'} ({rows[-1].get('build_wall_s', 0):.0f} s; "
                  f"ETA {done / len(rows) * (len(cells) - len(rows)) / 60:.0f} min)", file=sys.stderr, flush=True)
    rows.sort(key=lambda r: cells.index((r["seed"], r["kernel"], r["threads_asked"])))
    print(table(rows))
    bad = [r for r in rows if not in_band(r)]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} builds in band · {_cpu_name()} · {time.strftime('%Y-%m-%d')} · "
          f"cache {cache}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.platform(), "cpu": _cpu_name(), "rows": rows}, indent=2))
    sys.exit(1 if bad else 0)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
