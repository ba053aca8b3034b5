"""Training throughput of `rlaif train` (DPO, reward model) against SFT on the same model, in one run.

A random-init Llama (toy tokenizer; size from --hidden/--layers) is trained for --steps steps on
toy preference pairs through the same stage the CLI runs. The baseline is SFT on the chosen
answers with the same model, batch and steps: DPO does two sequences (chosen, rejected) per
example plus a reference forward, so ~2-3x SFT's time per step is expected; a much larger ratio
points at overhead in our wrapper. On a GPU the run uses bf16 where supported.

    python bench/train.py                       # toy size, CPU
    python bench/train.py --hidden 1024 --layers 12 --steps 30 --batch-size 16   # on a GPU
    python bench/train.py --model smollm2:135m-instruct --steps 6 --batch-size 4 --max-length 64   # the real model

With --model the base is that (pretrained) model instead of a random-init one; the toy pairs are
tokenized by its own tokenizer. Results go to bench/results/train.json (random-init) and
bench/results/train-<model>.json, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def build_model(path: Path, hidden: int, layers: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlaif import toy

    tok = toy.build_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=max(2, hidden // 64), num_key_value_heads=max(2, hidden // 64),
                         head_dim=64, intermediate_size=4 * hidden, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--model", default=None, help="Train this model (a name or path) instead of a random-init Llama.")
    args = ap.parse_args()
    os.environ.setdefault("RLAIF_CACHE", str(Path(__file__).resolve().parent.parent / ".cache" / "rlaif"))

    import torch

    from rlaif.config import load_config
    from rlaif.stages.train import run_train
    from test_train import write_exports

    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    if args.model:
        from transformers import AutoModelForCausalLM

        from rlaif.engines import resolve_model

        base = resolve_model(args.model)
        params = AutoModelForCausalLM.from_pretrained(base).num_parameters()
    else:
        base = str(root / "model")
        params = build_model(root / "model", args.hidden, args.layers)
    write_exports(root / "run", n_train=args.steps * args.batch_size, n_test=8)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    rows = {}
    for method in ("sft", "dpo", "rm"):
        cfg = load_config(None, [f"train.base={base}", f"train.max_steps={args.steps}",
                                 f"train.batch_size={args.batch_size}", f"train.max_length={args.max_length}",
                                 f"train.save_steps={args.steps + 1}"])
        t0 = time.perf_counter()
        summary = run_train(cfg, root / "run", method=method, progress=False, overwrite=True).summary
        rows[method] = {"steps_per_s": summary["steps_per_s"], "examples_per_s":
                        round(summary["steps_per_s"] * args.batch_size, 1),
                        "wall_s_with_loading": round(time.perf_counter() - t0, 1)}
    for method in ("dpo", "rm"):
        rows[method]["time_per_step_vs_sft"] = round(rows["sft"]["steps_per_s"] / rows[method]["steps_per_s"], 2)
    report = json.dumps({"device": device, "date": time.strftime("%Y-%m-%d"), "model": args.model or "random-init Llama",
                         "parameters": params, "steps": args.steps, "batch_size": args.batch_size,
                         "max_length": args.max_length, "results": rows}, indent=2)
    print(report)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    name = f"train-{args.model.replace(':', '-').replace('/', '_')}.json" if args.model else "train.json"
    (out / name).write_text(report)


if __name__ == "__main__":
    main()
