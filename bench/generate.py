"""Benchmark the generate stage against the same model called directly, in one run (ratios).

1. transformers: rlaif's stage (`run_generate`: sharding, Parquet, manifest) on the transformers
   engine vs a plain batched `transformers.generate` loop (no rlaif code); tokens/s, medians of
   interleaved rounds, and the ratio (target >= 0.95).
2. vLLM (`--engines transformers,vllm`): rlaif's stage on the vLLM engine vs raw
   `vllm.LLM.generate` on the same prompts, with the same `vllm.LLM` (target >= 0.95).
3. distilabel 1.5.3 `TextGeneration` with `TransformersLLM` on the same model, prompts and params,
   run in its own environment (bench/.venv-distilabel, when present).
4. Peak RSS of a real `rlaif generate` subprocess: for the toy, at 1k and 20k prompts (target:
   flat within +-10%); for a real model, one run per engine (the process, and its largest child:
   vLLM's engine core).

    .venv/bin/python bench/generate.py [--rounds 3] [--prompts 512] [--skip-memory]
    .venv/bin/python bench/generate.py --model smollm2:135m-instruct --engines transformers,vllm \
        --prompts 32 --hf-prompts 8 --max-new-tokens 64 --rounds 2
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
sys.path.insert(0, str(HERE))
N = 4
VLLM_OPTIONS = dict(dtype="float32", max_model_len=1024, enforce_eager=True, gpu_memory_utilization=0.3)


def direct_generate(model_path: str, prompts: list[list[dict]], seed: int, max_new: int, batch: int) -> tuple[int, float]:
    """The floor: batched HF generate on the same model and params, no rlaif code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    torch.manual_seed(seed)
    texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    tokens = 0
    t0 = time.perf_counter()
    per_batch = max(1, batch // N)
    for s in range(0, len(texts), per_batch):
        enc = tok(texts[s : s + per_batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new, do_sample=True, temperature=1.0, top_p=None,
                                 top_k=None, num_return_sequences=N, pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1] :]
        eos = tok.eos_token_id
        for row in new.tolist():
            tokens += row.index(eos) + 1 if eos in row else len(row)
    return tokens, time.perf_counter() - t0


def rlaif_stage(engine, model: str, input_path: str, seed: int, max_new: int, batch: int) -> tuple[int, float]:
    """The whole stage (input validation, sharding, generation, Parquet, manifest) on an already loaded
    engine: the model load is outside the timing, as it is for the baselines."""
    from rlaif.config import load_config
    from rlaif.stages.generate import run_generate

    cfg = load_config(None, None, {"generate.input": input_path, "generate.model": model, "generate.n": N,
                                   "generate.max_new_tokens": max_new, "generate.batch_size": batch, "seed": seed,
                                   "generate.shard_size": 256})
    with tempfile.TemporaryDirectory() as run:
        t0 = time.perf_counter()
        manifest = run_generate(cfg, run, progress=False, engine=engine)
        seconds = time.perf_counter() - t0
    return manifest.summary["tokens"], seconds


def raw_vllm(llm, texts: list[str], max_new: int) -> tuple[int, float]:
    """The vLLM floor: `LLM.generate` on the chat-templated prompts, n samples in one SamplingParams."""
    from vllm import SamplingParams

    params = SamplingParams(n=N, temperature=1.0, max_tokens=max_new)
    t0 = time.perf_counter()
    outs = llm.generate(texts, params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    return sum(len(c.token_ids) for o in outs for c in o.outputs), seconds


def distilabel_run(model_path: str, input_path: str, k: int, max_new: int, batch_prompts: int) -> dict | None:
    python = HERE / ".venv-distilabel" / "bin" / "python"
    if not python.exists():
        return None
    out = subprocess.run([str(python), str(HERE / "distilabel_generate.py"), model_path, input_path, str(k), str(N),
                          str(max_new), str(batch_prompts)], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb(input_path: str, run: str, model: str, *args: str) -> dict:
    """Peak RSS of a real `rlaif generate` subprocess and of its largest child (vLLM's engine core), each
    its own high-water mark (bench/peak_rss.py)."""
    out = subprocess.run([sys.executable, str(HERE / "peak_rss.py"), "generate", "--input", input_path, "--model",
                          model, "--out", run, "-q", *args], capture_output=True, text=True, timeout=3600)
    line = [x for x in out.stdout.splitlines() if x.startswith("RSS")]
    if out.returncode != 0 or not line:
        raise RuntimeError(out.stderr[-2000:])
    own, child = map(float, line[-1].split()[1:])
    return {"process": round(own, 1), "largest_child": round(child, 1)}


def write_prompts(path: Path, chats: list[list[dict]]) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "messages": c}) + "\n" for i, c in enumerate(chats)))
    return path


def interleaved(rounds: int, **sides) -> dict:
    """Median tokens/s of each side, the sides' rounds interleaved so drifting load hits them alike."""
    rates = {name: [] for name in sides}
    for r in range(rounds):
        for name, fn in sides.items():
            tokens, seconds = fn(r)
            rates[name].append(tokens / seconds)
    return {name: round(statistics.median(v), 1) for name, v in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy:policy", help="toy:policy, smollm2:135m-instruct, or a model path.")
    ap.add_argument("--engines", default="transformers", help="transformers and/or vllm, comma-separated.")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=512, help="Prompts of the vLLM job (and of transformers, "
                    "unless --hf-prompts).")
    ap.add_argument("--hf-prompts", type=int, default=None, help="Prompts of the transformers and distilabel job.")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=256, help="Sequences per transformers batch (prompts x n).")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    from rlaif import toy
    from rlaif.engines import resolve_model

    toy_model = args.model.startswith("toy:")
    model_path = resolve_model(args.model)
    hf_k = args.hf_prompts or args.prompts
    if toy_model:
        lines = toy.build()["prompts-train"].read_text().splitlines()
        all_chats = [json.loads(x)["messages"] for x in lines]
    else:
        from real_prompts import instruction_chats

        all_chats = instruction_chats(max(args.prompts, hf_k))
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                     "date": time.strftime("%Y-%m-%d"), "model": args.model,
                     "job": f"n={N}, T=1, max_new_tokens={args.max_new_tokens}; transformers: {hf_k} prompts, "
                            f"batches of {args.batch_size} sequences; vLLM: {args.prompts} prompts"}
    wanted = args.engines.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        hf_input = write_prompts(Path(tmp) / "prompts-hf.jsonl", all_chats[:hf_k])
        if "transformers" in wanted:
            from rlaif.engines.transformers import TransformersEngine

            engine = TransformersEngine(model_path, dtype="float32", batch_size=args.batch_size,
                                        display_name=args.model)
            rlaif_stage(engine, args.model, str(write_prompts(Path(tmp) / "warm-up.jsonl", all_chats[:4])), 0, 4,
                        args.batch_size)  # warm-up: the stage's first call (its imports, Parquet writer)
            rates = interleaved(
                args.rounds,
                direct=lambda r: direct_generate(model_path, all_chats[:hf_k], r, args.max_new_tokens, args.batch_size),
                rlaif=lambda r: rlaif_stage(engine, args.model, str(hf_input), r, args.max_new_tokens, args.batch_size))
            engine.close()
            results["transformers"] = {"direct_tokens_per_s": rates["direct"], "rlaif_tokens_per_s": rates["rlaif"],
                                       "rlaif_over_direct": round(rates["rlaif"] / rates["direct"], 3)}
            dl = distilabel_run(model_path, str(hf_input), hf_k, args.max_new_tokens, max(1, args.batch_size // N))
            if dl is not None:
                results["distilabel"] = dl
                if "tokens_per_s" in dl:
                    results["transformers"]["rlaif_over_distilabel"] = round(rates["rlaif"] / dl["tokens_per_s"], 2)
        if "vllm" in wanted:
            from rlaif.engines.vllm import VLLMEngine

            vllm_input = write_prompts(Path(tmp) / "prompts-vllm.jsonl", all_chats[: args.prompts])
            engine = VLLMEngine(model_path, display_name=args.model, **VLLM_OPTIONS)
            texts = [engine.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                     for c in all_chats[: args.prompts]]
            # warm-up of both sides: vLLM's first batches, and the stage's first call (its imports, Parquet writer)
            raw_vllm(engine.llm, texts[:4], 4)
            rlaif_stage(engine, args.model, str(write_prompts(Path(tmp) / "warm-up.jsonl", all_chats[:4])), 0, 4, 256)
            rates = interleaved(
                args.rounds,
                raw=lambda r: raw_vllm(engine.llm, texts, args.max_new_tokens),
                rlaif=lambda r: rlaif_stage(engine, args.model, str(vllm_input), r, args.max_new_tokens, 256))
            engine.close()
            results["vllm"] = {"raw_llm_generate_tokens_per_s": rates["raw"], "rlaif_tokens_per_s": rates["rlaif"],
                               "rlaif_over_raw": round(rates["rlaif"] / rates["raw"], 3)}

        if not args.skip_memory:
            results["peak_rss_mb"] = memory(args, tmp, all_chats, hf_input, toy_model, wanted)
    print(json.dumps(results, indent=2))
    (HERE / "results").mkdir(exist_ok=True)
    name = "generate.json" if toy_model else f"generate-{args.model.replace(':', '-').replace('/', '_')}.json"
    (HERE / "results" / name).write_text(json.dumps(results, indent=2))


def memory(args, tmp: str, all_chats, hf_input: Path, toy_model: bool, wanted: list[str]) -> dict:
    """Toy: flat memory from 1k to 20k prompts. Real model: one `rlaif generate` per engine."""
    if toy_model:
        rss = {}
        for k in (1000, 20000):
            rows = (all_chats * (k // len(all_chats) + 1))[:k]
            path = write_prompts(Path(tmp) / f"mem-{k}.jsonl", rows)
            rss[k] = peak_rss_mb(str(path), str(Path(tmp) / f"run-{k}"), args.model, "--n", "1", "--max-new-tokens",
                                 "4", "--shard-size", "500")["process"]
        return {"1k_prompts": rss[1000], "20k_prompts": rss[20000],
                "growth_20k_over_1k": round(rss[20000] / rss[1000] - 1, 3)}
    out = {}
    job = ["--n", str(N), "--max-new-tokens", str(args.max_new_tokens), "--set", "generate.dtype=float32"]
    for engine in wanted:
        extra = ["--set", "generate.max_model_len=1024", "--set", "generate.enforce_eager=true"] if engine == "vllm" else []
        out[engine] = peak_rss_mb(str(hf_input), str(Path(tmp) / f"rss-{engine}"), args.model, "--engine", engine,
                                  *job, *extra)
    return out


if __name__ == "__main__":
    main()
