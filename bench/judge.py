"""Benchmark: judge throughput and agreement, on the same model and the same candidates.

    RLAIF_CACHE=.cache/rlaif .venv/bin/python bench/judge.py [--prompts 100] [--rationale-tokens 64]

Rows are comparisons (a pair of candidates, judged in both orders), per second:
  (a) rlaif pairwise judge, log-prob verdicts, all pairs, both orders (`rlaif.judge`)
  (b) a text judge: generates a rationale of --rationale-tokens tokens, then the verdict, per order
  (c) distilabel's UltraFeedback task with TransformersLLM (if distilabel imports; else skipped)
  (d) the floor: one raw batched forward pass per order, no rlaif code (tokenise, pad, forward)
  (e) for reference: the rlaif likelihood judge (one pass per candidate, no pairs needed)
Candidates: per held-out toy prompt, the right sum and three near misses, so each pair's right side is
known; agreement = share of right-vs-wrong pairs where the judge prefers the right one.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("RLAIF_CACHE", str(Path(__file__).resolve().parent.parent / ".cache" / "rlaif"))


def candidates(k: int):
    import datasets

    from rlaif import toy

    rng = random.Random(0)
    rows = []
    for a, b in toy.problems()["test"][:k]:
        texts = [str(a + b)] + [str(a + b + d) for d in rng.sample([-10, -2, -1, 1, 2, 10, 11], 3)]
        rng.shuffle(texts)
        for i, t in enumerate(texts):
            rows.append({"prompt_id": f"add-{a}-{b}", "prompt": [{"role": "user", "content": toy.question(a, b)}],
                         "candidate_index": i, "text": t, "num_tokens": len(t) + 1, "finish_reason": "stop",
                         "failure": None, "solution": str(a + b)})
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
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--rationale-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="Best of this many runs for (a) and (d).")
    args = ap.parse_args()

    import torch

    import rlaif
    from rlaif import toy
    from rlaif.engines.transformers import TransformersEngine
    from rlaif.judges.likelihood import LikelihoodJudge
    from rlaif.judges.pairwise import PairwiseJudge

    torch.set_num_threads(os.cpu_count() or 1)
    engine = TransformersEngine(toy.resolve("toy:judge"), batch_size=args.batch_size, display_name="toy:judge")
    data = candidates(args.prompts)
    rows = data.to_list()
    n_pairs = args.prompts * 6
    results = {}

    # (a) rlaif, log-prob verdicts, both orders (after a warm-up call; best of --repeats)
    judge = PairwiseJudge(engine, "toy-pairwise")
    rlaif.judge(data.select(range(8)), judge)
    secs = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        scores, comps = rlaif.judge(data, judge, comparisons=True)
        secs = min(secs, time.perf_counter() - t0)
    pref = {(r["prompt_id"], r["candidate_a"], r["candidate_b"]): r["preference"] for r in comps}
    results["(a) rlaif pairwise, log-probs"] = (n_pairs / secs, agreement(rows, lambda p, a, b: pref[(p, a, b)]))

    # the judge prompts of both orders, rendered once (outside every timing below)
    texts = {}
    for pid, group in _groups(rows).items():
        q = group[0]["prompt"][0]["content"]
        for a, b in combinations(range(len(group)), 2):
            for key, (x, y) in (((pid, a, b), (a, b)), ((pid, b, a), (b, a))):
                chat = judge.prompt(q, group[x]["text"], group[y]["text"])
                texts[key] = engine.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    keys = list(texts)
    tok, model = engine.tokenizer, engine.model
    one, two = tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("2")

    # (d) the floor: raw batched forward passes, no rlaif code (best of --repeats)
    secs = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        p1 = {}
        with torch.inference_mode():
            for s in range(0, len(keys), args.batch_size):
                chunk = keys[s:s + args.batch_size]
                enc = tok([texts[k] for k in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
                last = torch.softmax(model(**enc).logits[:, -1].float(), -1)
                for k, row in zip(chunk, last):
                    p1[k] = (row[one] / (row[one] + row[two])).item()
        secs = min(secs, time.perf_counter() - t0)
    results["(d) floor: raw forward pass"] = (
        n_pairs / secs, agreement(rows, lambda p, a, b: (p1[(p, a, b)] + 1 - p1[(p, b, a)]) / 2))

    # (b) a text judge: rationale of N tokens, then the verdict, per order
    from rlaif.judges.parsing import parse_verdict

    t0 = time.perf_counter()
    verdict = {}
    with torch.inference_mode():
        for s in range(0, len(keys), args.batch_size):
            chunk = keys[s:s + args.batch_size]
            enc = tok([texts[k] for k in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=args.rationale_tokens + 2, min_new_tokens=args.rationale_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id, top_k=None, top_p=None)
            for k, ids in zip(chunk, out[:, enc["input_ids"].shape[1]:]):
                text = tok.decode(ids, skip_special_tokens=True)
                v, _ = parse_verdict(text.splitlines()[-1] if text.strip() else text, ["1", "2"])
                verdict[k] = None if v is None else float(v == "1")
    secs = time.perf_counter() - t0

    def text_pref(p, a, b):
        x, y = verdict[(p, a, b)], verdict[(p, b, a)]
        return None if x is None or y is None else (x + 1 - y) / 2

    results[f"(b) text judge, {args.rationale_tokens}-token rationale"] = (n_pairs / secs, agreement(rows, text_pref))

    # (c) distilabel UltraFeedback + TransformersLLM
    try:
        results["(c) distilabel UltraFeedback"] = _distilabel(rows, n_pairs)
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
    print(f"{args.prompts} prompts x 4 candidates = {n_pairs} pairs, both orders; model toy:judge; "
          f"{os.cpu_count()} CPU threads, torch {torch.__version__}")
    print(f"| judge | pairs/s | (a) / this | agreement with checker |\n|---|---|---|---|")
    for name, (rate, agree) in results.items():
        if rate is None:
            print(f"| {name} | skipped: {agree} | | |")
        else:
            print(f"| {name} | {rate:,.1f} | {base / rate:.2f} | {agree:.3f} |")


def _groups(rows):
    out = {}
    for r in rows:
        out.setdefault(r["prompt_id"], []).append(r)
    return out


def _distilabel(rows, n_pairs):
    try:
        from distilabel.models.llms import TransformersLLM  # noqa: F401
        from distilabel.steps.tasks import UltraFeedback  # noqa: F401
    except Exception as e:  # noqa: BLE001 - optional peer
        return (None, f"distilabel not importable ({type(e).__name__}); install it in a separate env")
    from distilabel.models.llms import TransformersLLM
    from distilabel.steps.tasks import UltraFeedback

    from rlaif import toy

    llm = TransformersLLM(model=toy.resolve("toy:judge"), device="cpu", generation_kwargs={"max_new_tokens": 64})
    task = UltraFeedback(llm=llm, aspect="overall-rating")
    task.load()
    groups = _groups(rows)
    inputs = [{"instruction": g[0]["prompt"][0]["content"], "generations": [r["text"] for r in g]} for g in groups.values()]
    t0 = time.perf_counter()
    outs = list(task.process(inputs))[0]
    secs = time.perf_counter() - t0
    hits = total = 0
    for g, o in zip(groups.values(), outs):
        ratings = list(o.get("ratings") or [])
        ratings += [None] * (len(g) - len(ratings))  # an unparsed reply gives fewer ratings than generations
        for a, b in combinations(range(len(g)), 2):
            ra, rb = g[a]["text"] == g[a]["solution"], g[b]["text"] == g[b]["solution"]
            if ra != rb:
                total += 1
                x, y = ratings[a], ratings[b]
                hits += x is not None and y is not None and x != y and (x > y) == ra
    # UltraFeedback rates all N candidates in one call: its "pairs" are the same N(N-1)/2 per prompt
    return (n_pairs / secs, hits / total if total else float("nan"))


if __name__ == "__main__":
    main()
