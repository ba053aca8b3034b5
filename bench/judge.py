"""Benchmark: judge throughput and agreement, on the same model and the same candidates.

    RLAIF_CACHE=.cache/rlaif .venv/bin/python bench/judge.py [--prompts 100] [--rationale-tokens 64]
    RLAIF_CACHE=.cache/rlaif .venv/bin/python bench/judge.py --model smollm2:135m-instruct --prompts 8 --batch-size 16

Rows are comparisons (a pair of candidates, judged in both orders), per second:
  (a) rlaif pairwise judge, log-prob verdicts, all pairs, both orders (`rlaif.judge`)
  (b) a text judge: the same prompts asking for reasoning first, decoding a rationale of
      --rationale-tokens tokens, then the verdict, per order
  (c) distilabel's UltraFeedback task with TransformersLLM on the same candidates (in-process when
      distilabel imports, else in bench/.venv-distilabel when it exists; else skipped)
  (d) the floor: one raw batched forward pass per order, no rlaif code (tokenise, pad, forward)
  (e) for reference: the rlaif likelihood judge (one pass per candidate, no pairs needed)
Candidates: per prompt, the right sum and three near misses, so each pair's right side is known;
agreement = share of right-vs-wrong pairs where the judge prefers the right one. Toy: the toy
judge, toy prompts and the toy-pairwise template; another model: "What is a + b?" with answers
"a + b = c." and the shipped pairwise template.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
os.environ.setdefault("RLAIF_CACHE", str(HERE.parent / ".cache" / "rlaif"))


def candidates(k: int, toy_model: bool):
    import datasets

    rows = []
    if toy_model:
        from rlaif import toy

        rng = random.Random(0)
        groups = []
        for a, b in toy.problems()["test"][:k]:
            texts = [str(a + b)] + [str(a + b + d) for d in rng.sample([-10, -2, -1, 1, 2, 10, 11], 3)]
            rng.shuffle(texts)
            groups.append({"prompt_id": f"add-{a}-{b}", "question": toy.question(a, b), "texts": texts,
                           "solution": str(a + b)})
    else:
        from real_prompts import arithmetic_candidates

        groups = arithmetic_candidates(k)
    for g in groups:
        for i, t in enumerate(g["texts"]):
            rows.append({"prompt_id": g["prompt_id"], "prompt": [{"role": "user", "content": g["question"]}],
                         "candidate_index": i, "text": t, "num_tokens": len(t) + 1, "finish_reason": "stop",
                         "failure": None, "solution": g["solution"]})
    return datasets.Dataset.from_list(rows)


def agreement(rows, prefer):  # prefer(prompt_id, a, b) -> P(a > b) or None
    by = {}
    for r in rows:
        by.setdefault(r["prompt_id"], {})[r["candidate_index"]] = r["text"] == r["solution"]
    hits = total = 0
    for pid, right in by.items():
        for a, b in combinations(sorted(right), 2):
            if right[a] != right[b]:
                p = prefer(pid, a, b)
                total += 1
                hits += p is not None and p != 0.5 and (p > 0.5) == right[a]
    return hits / total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy:judge", help="toy:judge, smollm2:135m-instruct, or a model path.")
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--rationale-tokens", type=int, default=64)
    ap.add_argument("--batch-size", default="128", help="Judge prompts per batch; several (e.g. 1,4,16) measure (a), "
                    "(b) and (d) at each, the last one also for (c) and (e).")
    ap.add_argument("--repeats", type=int, default=3, help="Best of this many runs for (a) and (d).")
    ap.add_argument("--distilabel-worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.distilabel_worker:
        return distilabel_worker(*args.distilabel_worker)

    import torch

    import rlaif
    from rlaif.engines import resolve_model
    from rlaif.engines.transformers import TransformersEngine
    from rlaif.judges.likelihood import LikelihoodJudge
    from rlaif.judges.pairwise import PairwiseJudge

    toy_model = args.model.startswith("toy:")
    model_path = resolve_model(args.model)
    torch.set_num_threads(os.cpu_count() or 1)
    batch_sizes = [int(b) for b in str(args.batch_size).split(",")]
    engine = TransformersEngine(model_path, dtype="float32", batch_size=batch_sizes[-1], display_name=args.model)
    data = candidates(args.prompts, toy_model)
    rows = data.to_list()
    n_pairs = args.prompts * 6
    results = {}

    # the judge prompts of both orders, rendered once (outside every timing below); (b) asks for reasoning first
    judge = PairwiseJudge(engine, "toy-pairwise" if toy_model else "pairwise")
    texts, cot_texts = {}, {}
    for pid, group in _groups(rows).items():
        q = group[0]["prompt"][0]["content"]
        for a, b in combinations(range(len(group)), 2):
            for key, (x, y) in (((pid, a, b), (a, b)), ((pid, b, a), (b, a))):
                for out, cot in ((texts, False), (cot_texts, True)):
                    chat = judge.prompt(q, group[x]["text"], group[y]["text"], cot=cot)
                    out[key] = engine.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    keys = list(texts)
    tok, model = engine.tokenizer, engine.model
    one, two = tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("2")

    def rlaif_pass(batch: int):
        """(a) rlaif, log-prob verdicts, both orders, through the judge stage's Python API."""
        engine.batch_size = batch
        return rlaif.judge(data, judge, comparisons=True)[1]

    # the floor's batches are rlaif's: the same prompts, sorted by token length, `batch` at a time
    order = sorted(keys, key=lambda k: len(tok(texts[k], add_special_tokens=False)["input_ids"]))

    def floor_pass(batch: int):
        """(d) the floor: raw batched forward passes, last position's logits only, softmax over the verdicts."""
        p1 = {}
        with torch.inference_mode():
            for s in range(0, len(order), batch):
                chunk = order[s:s + batch]
                enc = tok([texts[k] for k in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
                last = model(**enc, logits_to_keep=1).logits[:, -1, [one, two]].float()
                for k, p in zip(chunk, torch.softmax(last, -1)[:, 0].tolist()):
                    p1[k] = p
        return p1

    from rlaif.judges.parsing import parse_verdict

    def text_pass(batch: int):
        """(b) a text judge: a rationale of --rationale-tokens tokens, then the verdict, per order."""
        verdict = {}
        with torch.inference_mode():
            for s in range(0, len(keys), batch):
                chunk = keys[s:s + batch]
                enc = tok([cot_texts[k] for k in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
                out = model.generate(**enc, max_new_tokens=args.rationale_tokens + 4,
                                     min_new_tokens=args.rationale_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id, top_k=None, top_p=None)
                for k, ids in zip(chunk, out[:, enc["input_ids"].shape[1]:]):
                    text = tok.decode(ids, skip_special_tokens=True)
                    v, _ = parse_verdict(text.splitlines()[-1] if text.strip() else text, ["1", "2"])
                    verdict[k] = None if v is None else float(v == "1")
        return verdict

    def text_pref(verdict):
        def pref(p, a, b):
            x, y = verdict[(p, a, b)], verdict[(p, b, a)]
            return None if x is None or y is None else (x + 1 - y) / 2
        return pref

    # per batch size: after a warm-up call, (a) and (d) best of --repeats, interleaved so drifting load hits both
    # alike; (b) once (one run of it outlasts several of the others)
    rlaif.judge(data.select(range(8)), judge)
    sweep = {}
    for batch in batch_sizes:
        best, outputs = {"a": float("inf"), "d": float("inf")}, {}
        for _ in range(args.repeats):
            for side, fn in (("a", rlaif_pass), ("d", floor_pass)):
                t0 = time.perf_counter()
                outputs[side] = fn(batch)
                best[side] = min(best[side], time.perf_counter() - t0)
        t0 = time.perf_counter()
        verdict = text_pass(batch)
        best["b"] = time.perf_counter() - t0
        comps, p1 = outputs["a"], outputs["d"]
        pref = {(r["prompt_id"], r["candidate_a"], r["candidate_b"]): r["preference"] for r in comps}
        sweep[batch] = {
            "(a) rlaif pairwise, log-probs": (n_pairs / best["a"], agreement(rows, lambda p, a, b: pref[(p, a, b)])),
            "(d) floor: raw forward pass": (
                n_pairs / best["d"], agreement(rows, lambda p, a, b: (p1[(p, a, b)] + 1 - p1[(p, b, a)]) / 2)),
            f"(b) text judge, {args.rationale_tokens}-token rationale": (n_pairs / best["b"],
                                                                         agreement(rows, text_pref(verdict)))}
    results.update(sweep[batch_sizes[-1]])
    engine.batch_size = batch_sizes[-1]

    # (c) distilabel UltraFeedback + TransformersLLM
    try:
        results["(c) distilabel UltraFeedback"] = _distilabel(rows, n_pairs, model_path, args.rationale_tokens)
    except Exception as e:  # noqa: BLE001 - a peer's failure is a result, not a crash
        import traceback

        traceback.print_exc()
        results["(c) distilabel UltraFeedback"] = (None, f"failed: {type(e).__name__}: {str(e)[:200]}")

    # (e) likelihood judge (reference: one pass per candidate)
    lj = LikelihoodJudge(engine)
    t0 = time.perf_counter()
    ls = rlaif.judge(data, lj)
    secs = time.perf_counter() - t0
    sc = {(r["prompt_id"], r["candidate_index"]): r["score"] for r in ls}
    results["(e) rlaif likelihood judge"] = (
        n_pairs / secs, agreement(rows, lambda p, a, b: LikelihoodJudge.preference(sc[(p, a)], sc[(p, b)])))

    base = results["(a) rlaif pairwise, log-probs"][0]
    floor = results["(d) floor: raw forward pass"][0]
    text = results[f"(b) text judge, {args.rationale_tokens}-token rationale"][0]
    print(f"{args.prompts} prompts x 4 candidates = {n_pairs} pairs, both orders; model {args.model}; "
          f"{platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
    print("| judge | pairs/s | (a) / this | agreement with checker |\n|---|---|---|---|")
    for name, (rate, agree) in results.items():
        if rate is None:
            print(f"| {name} | skipped: {agree} | | |")
        else:
            print(f"| {name} | {rate:,.1f} | {base / rate:.2f} | {agree:.3f} |" if rate >= 10 else
                  f"| {name} | {rate:.3f} | {base / rate:.2f} | {agree:.3f} |")
    print(f"targets: (a)/(d) = {base / floor:.2f} (>= 0.90); (a)/(b) = {base / text:.1f} (>= 10)")
    text_key = f"(b) text judge, {args.rationale_tokens}-token rationale"
    ratios = {b: {"a_pairs_per_s": round(v["(a) rlaif pairwise, log-probs"][0], 4),
                  "a_over_floor": round(v["(a) rlaif pairwise, log-probs"][0] / v["(d) floor: raw forward pass"][0], 3),
                  "a_over_text": round(v["(a) rlaif pairwise, log-probs"][0] / v[text_key][0], 2)}
              for b, v in sweep.items()}
    if len(sweep) > 1:
        print("| judge prompts per batch | (a) pairs/s | (a) / (d) floor | (a) / (b) text judge |\n|---|---|---|---|")
        for b, r in ratios.items():
            print(f"| {b} | {r['a_pairs_per_s']:.3f} | {r['a_over_floor']:.2f} | {r['a_over_text']:.1f} |")
    (HERE / "results").mkdir(exist_ok=True)
    name = "judge.json" if toy_model else f"judge-{args.model.replace(':', '-').replace('/', '_')}.json"
    (HERE / "results" / name).write_text(json.dumps(
        {"model": args.model, "pairs": n_pairs, "date": time.strftime("%Y-%m-%d"),
         "machine": f"{platform.machine()}, {os.cpu_count()} cores",
         "results": {k: {"pairs_per_s": r, "agreement": a} for k, (r, a) in results.items()},
         "a_over_floor": round(base / floor, 3), "a_over_text": round(base / text, 2), "by_batch_size": ratios},
        indent=2))


def _groups(rows):
    out = {}
    for r in rows:
        out.setdefault(r["prompt_id"], []).append(r)
    return out


def _distilabel(rows, n_pairs, model_path: str, max_new: int):
    """distilabel's UltraFeedback on the same candidates; in this process if it imports, else in its own venv."""
    groups = _groups(rows)
    job = {"model": model_path, "max_new_tokens": max_new,
           "inputs": [{"instruction": g[0]["prompt"][0]["content"], "generations": [r["text"] for r in g]}
                      for g in groups.values()]}
    try:
        import distilabel  # noqa: F401
        out = _ultrafeedback(job)
    except ImportError:
        python = HERE / ".venv-distilabel" / "bin" / "python"
        if not python.exists():
            return (None, "distilabel not importable; create bench/.venv-distilabel (docs/real-model.md)")
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.json", Path(tmp) / "out.json"
            src.write_text(json.dumps(job))
            res = subprocess.run([str(python), __file__, "--distilabel-worker", str(src), str(dst)],
                                 capture_output=True, text=True, timeout=3600)
            if res.returncode != 0:
                return (None, "failed: " + (res.stderr.strip().splitlines() or ["?"])[-1][:200])
            out = json.loads(dst.read_text())
    hits = total = 0
    for g, ratings in zip(groups.values(), out["ratings"]):
        ratings = list(ratings or [])
        ratings += [None] * (len(g) - len(ratings))  # an unparsed reply gives fewer ratings than generations
        for a, b in combinations(range(len(g)), 2):
            ra, rb = g[a]["text"] == g[a]["solution"], g[b]["text"] == g[b]["solution"]
            if ra != rb:
                total += 1
                x, y = ratings[a], ratings[b]
                hits += x is not None and y is not None and x != y and (x > y) == ra
    # UltraFeedback rates all N candidates in one call: its "pairs" are the same N(N-1)/2 per prompt
    return (n_pairs / out["seconds"], hits / total if total else float("nan"))


def _ultrafeedback(job: dict) -> dict:
    from distilabel.models.llms import TransformersLLM
    from distilabel.steps.tasks import UltraFeedback

    llm = TransformersLLM(model=job["model"], device="cpu", torch_dtype="float32",
                          generation_kwargs={"max_new_tokens": job["max_new_tokens"]})
    task = UltraFeedback(llm=llm, aspect="overall-rating")
    task.load()
    t0 = time.perf_counter()
    outs = list(task.process(job["inputs"]))[0]
    return {"seconds": time.perf_counter() - t0, "ratings": [o.get("ratings") for o in outs]}


def distilabel_worker(src: str, dst: str) -> None:
    Path(dst).write_text(json.dumps(_ultrafeedback(json.loads(Path(src).read_text()))))


if __name__ == "__main__":
    main()
