"""Benchmark the generate stage.

1. rlaif's stage (`run_generate`: sharding, Parquet, manifest) vs the same model called directly
   (a plain batched `transformers.generate` loop, no rlaif code): tokens/s of each, median of
   several rounds, and the ratio (target >= 0.95).
2. distilabel's `TextGeneration` with `TransformersLLM` on the same model, prompts and params
   (run in its own environment, bench/.venv-distilabel, when present: see bench/README.md).
3. Peak RSS of `rlaif generate` at 1k and 20k prompts (target: flat within +-10%).

    .venv/bin/python bench/generate.py [--rounds 3] [--prompts 512] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
N, MAX_NEW, BATCH = 4, 8, 256


def direct_generate(model_path: str, prompts: list[list[dict]], seed: int) -> tuple[int, float]:
    """The floor: batched HF generate on the same model and params, no rlaif code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    torch.manual_seed(seed)
    texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    tokens = 0
    t0 = time.perf_counter()
    per_batch = BATCH // N
    for s in range(0, len(texts), per_batch):
        enc = tok(texts[s : s + per_batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=MAX_NEW, do_sample=True, temperature=1.0, top_p=None,
                                 top_k=None, num_return_sequences=N, pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1] :]
        eos = tok.eos_token_id
        for row in new.tolist():
            tokens += row.index(eos) + 1 if eos in row else len(row)
    return tokens, time.perf_counter() - t0


def rlaif_stage(input_path: str, seed: int) -> tuple[int, float]:
    """The whole stage (input validation, sharding, generation, Parquet, manifest); the model load is
    outside the timing, as it is for the direct baseline."""
    from rlaif import toy
    from rlaif.config import load_config
    from rlaif.engines.transformers import TransformersEngine
    from rlaif.stages.generate import run_generate

    engine = TransformersEngine(toy.resolve("toy:policy"), batch_size=BATCH, display_name="toy:policy")

    cfg = load_config(None, None, {"generate.input": input_path, "generate.model": "toy:policy", "generate.n": N,
                                   "generate.max_new_tokens": MAX_NEW, "generate.batch_size": BATCH, "seed": seed,
                                   "generate.shard_size": 256})
    with tempfile.TemporaryDirectory() as run:
        t0 = time.perf_counter()
        manifest = run_generate(cfg, run, progress=False, engine=engine)
        seconds = time.perf_counter() - t0
    return manifest.summary["tokens"], seconds


def distilabel_run(model_path: str, input_path: str, k: int) -> dict | None:
    python = HERE / ".venv-distilabel" / "bin" / "python"
    if not python.exists():
        return None
    out = subprocess.run([str(python), str(HERE / "distilabel_generate.py"), model_path, input_path, str(k), str(N),
                          str(MAX_NEW), str(BATCH // N)], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb(input_path: str, run: str) -> float:
    """Peak RSS of a real `rlaif generate` subprocess (n=1, short answers, so 20k prompts stay quick)."""
    code = (
        "import resource, sys; sys.argv = ['rlaif'] + sys.argv[1:]\n"
        "from rlaif.cli import app\n"
        "try:\n    app(standalone_mode=False)\nfinally:\n"
        "    print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, "generate", "--input", input_path, "--model", "toy:policy",
                          "--n", "1", "--max-new-tokens", "4", "--out", run, "-q", "--shard-size", "500"],
                         capture_output=True, text=True, timeout=1800)
    line = [x for x in out.stdout.splitlines() if x.startswith("RSS")]
    if out.returncode != 0 or not line:
        raise RuntimeError(out.stderr[-2000:])
    return float(line[0].split()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()

    from rlaif import toy

    paths = toy.build()
    train_lines = paths["prompts-train"].read_text().splitlines()
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
                     "job": f"{args.prompts} toy prompts x n={N}, max_new_tokens={MAX_NEW}, batch {BATCH} sequences"}
    with tempfile.TemporaryDirectory() as tmp:
        input_path = Path(tmp) / "prompts.jsonl"
        input_path.write_text("\n".join(train_lines[: args.prompts]) + "\n")
        prompts = [json.loads(x)["messages"] for x in train_lines[: args.prompts]]
        direct, stage = [], []
        for r in range(args.rounds):  # interleaved, so drift in machine load hits both alike
            tokens, s = direct_generate(str(paths["policy"]), prompts, seed=r)
            direct.append(tokens / s)
            tokens, s = rlaif_stage(str(input_path), seed=r)
            stage.append(tokens / s)
        results["direct_tokens_per_s"] = round(statistics.median(direct), 1)
        results["rlaif_tokens_per_s"] = round(statistics.median(stage), 1)
        results["rlaif_over_direct"] = round(results["rlaif_tokens_per_s"] / results["direct_tokens_per_s"], 3)

        dl = distilabel_run(str(paths["policy"]), str(input_path), args.prompts)
        if dl is not None:
            results["distilabel"] = dl
            if "tokens_per_s" in dl:
                results["rlaif_over_distilabel"] = round(results["rlaif_tokens_per_s"] / dl["tokens_per_s"], 2)

        if not args.skip_memory:
            rss = {}
            for k in (1000, 20000):
                path = Path(tmp) / f"mem-{k}.jsonl"
                rows = (train_lines * 3)[:k]
                path.write_text("\n".join(json.dumps({**json.loads(x), "id": f"{i}"}) for i, x in enumerate(rows)) + "\n")
                rss[k] = peak_rss_mb(str(path), str(Path(tmp) / f"run-{k}"))
            results["peak_rss_mb_1k"] = round(rss[1000], 1)
            results["peak_rss_mb_20k"] = round(rss[20000], 1)
            results["rss_growth_20k_over_1k"] = round(rss[20000] / rss[1000] - 1, 3)
    print(json.dumps(results, indent=2))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "generate.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
