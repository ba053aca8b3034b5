"""Prompts for the benchmarks on a real instruction model (the toy prompts are sums a real model finds trivial).

Short, varied instructions, built deterministically, so every benchmark and every run sees the same ones.
"""

from __future__ import annotations

TASKS = ["Write two sentences about {}.", "Give one fact about {}.", "Describe {} to a child in one sentence.",
         "Write a short poem about {}.", "What is the most surprising thing about {}?",
         "List three words that go with {}.", "Explain why people like {}.", "Write a question about {}."]
TOPICS = ["cats", "the sea", "bread", "rain", "trains", "music", "stars", "tea", "mountains", "bicycles", "snow",
          "libraries", "bees", "clocks", "rivers", "chess"]


def instruction_chats(k: int) -> list[list[dict]]:
    """The first `k` instruction prompts as single-turn chats (topics vary fastest)."""
    texts = [task.format(topic) for task in TASKS for topic in TOPICS]
    if k > len(texts):
        texts = [f"{t} (#{i})" for i, t in enumerate(texts * (k // len(texts) + 1))]
    return [[{"role": "user", "content": t}] for t in texts[:k]]


def arithmetic_candidates(k: int, seed: int = 0) -> list[dict]:
    """Per sum: the question, its answer and three near misses (shuffled), so each pair's better side is known."""
    import random

    rng = random.Random(seed)
    out = []
    for i in range(k):
        a, b = rng.randrange(10, 90), rng.randrange(10, 90)
        texts = [f"{a} + {b} = {a + b}."] + [f"{a} + {b} = {a + b + d}." for d in rng.sample([-10, -2, -1, 1, 2, 10], 3)]
        rng.shuffle(texts)
        out.append({"prompt_id": f"add-{a}-{b}", "question": f"What is {a} + {b}?", "texts": texts,
                    "solution": f"{a} + {b} = {a + b}."})
    return out
