"""`ifeval-lite`: short IFEval-style prompts (topics x constraints) plus arithmetic and factual questions.

Every row says how to check its answer: `constraint` names the check and `constraint_args` (a JSON
string) holds its arguments, so `verify` — one function with TRL's reward signature — scores any
row, as a `verifier` judge, as a GRPO reward and as the evaluate stage's checker.

The split is seeded and leaves nothing to luck: the test split has its own topics, its own
wordings of each constraint, its own arithmetic problems and questions, and three constraint types
(`HELD_OUT_TYPES`) that the train split never shows. Rows come interleaved by category, so any
prefix (`--limit 200`) covers every category about evenly.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

from rlaif.tasks.constraints import CONSTRAINTS, arithmetic, fact
from rlaif.tasks.facts import FACTS
from rlaif.tasks.topics import TOPICS

SEED = 0
SPLITS = ("train", "test")
HELD_OUT_TYPES = ("uppercase", "no_commas", "title")
TEST_TOPICS = 24
TEST_WORDINGS = 2
TEST_ARITHMETIC = 100
TRAIN_ARITHMETIC = 300
TEST_FACTS = 18

ARITHMETIC_WORDINGS = (
    "What is {a} {op} {b}? Answer with the number only.",
    "Compute {a} {op} {b}.",
    "{a} {op} {b} = ?",
    "What do you get when you calculate {a} {op} {b}?",
    "Work out {a} {op} {b} and give the result.",
)
FACT_WORDINGS = (
    "{question}",
    "{question} Answer in a few words.",
    "Answer briefly: {question}",
    "Quick question: {question}",
    "{question} Reply with a short answer.",
)
CHECKS = {**{name: c.check for name, c in CONSTRAINTS.items()}, "arithmetic": arithmetic, "fact": fact}
CATEGORIES = tuple(CHECKS)


def verify(completions: list, constraint: list[str | None], constraint_args: list, **_) -> list[float | None]:
    """TRL reward signature: 1.0 when the completion obeys its row's constraint, else 0.0.

    `completions` are plain strings or conversational (`[{"role": "assistant", "content": ...}]`);
    `constraint_args` are JSON strings or dicts. A row with no constraint is not applicable (None).
    """
    out: list[float | None] = []
    for completion, name, args in zip(completions, constraint, constraint_args, strict=True):
        if name is None:
            out.append(None)
            continue
        if name not in CHECKS:
            raise ValueError(f"unknown constraint {name!r}; expected one of {', '.join(CHECKS)}")
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        kwargs = json.loads(args) if isinstance(args, str) else dict(args or {})
        out.append(float(CHECKS[name](text, **kwargs)))
    return out


# ---------------------------------------------------------------- the split


def _rng(*key) -> random.Random:
    """A generator per item, so one row's draw never shifts another's when the lists grow."""
    return random.Random(":".join(map(str, (SEED, *key))))


def _split_of(items: list, n_test: int, key: str) -> dict[str, list]:
    test = set(_rng(key).sample(range(len(items)), n_test))
    return {"test": [x for i, x in enumerate(items) if i in test],
            "train": [x for i, x in enumerate(items) if i not in test]}


def wordings(name: str, count: int) -> dict[str, list[int]]:
    """Wording indices per split: TEST_WORDINGS for test, the rest for train."""
    return _split_of(list(range(count)), TEST_WORDINGS, f"wordings:{name}")


def topics() -> dict[str, list[str]]:
    return _split_of(list(TOPICS), TEST_TOPICS, "topics")


def _row(row_id: str, category: str, prompt: str, args: dict, topic: str | None = None,
         solution: str | None = None) -> dict:
    return {"id": row_id, "messages": [{"role": "user", "content": prompt}], "category": category,
            "constraint": category, "constraint_args": json.dumps(args, sort_keys=True), "topic": topic,
            "solution": solution}


def _constraint_rows(split: str) -> Iterator[dict]:
    for name, c in CONSTRAINTS.items():
        if split == "train" and name in HELD_OUT_TYPES:
            continue
        for topic in topics()[split]:
            for w in wordings(name, len(c.wordings))[split]:
                args = c.arguments(_rng(name, topic, w), {"name": topic, "words": TOPICS[topic]})
                slug = topic.replace(" ", "-")
                yield _row(f"{name}/{slug}/w{w}", name, c.prompt(w, topic, args), args, topic=topic)


def _problems() -> list[tuple[int, str, int]]:
    rng = _rng("arithmetic")
    seen: set[tuple[int, str, int]] = set()
    while len(seen) < TEST_ARITHMETIC + TRAIN_ARITHMETIC:
        op = rng.choice("+-*")
        a, b = (rng.randint(2, 12), rng.randint(2, 12)) if op == "*" else (rng.randint(2, 99), rng.randint(2, 99))
        seen.add((max(a, b), op, min(a, b)) if op == "-" else (a, op, b))
    return sorted(seen)


def _arithmetic_rows(split: str) -> Iterator[dict]:
    ways = wordings("arithmetic", len(ARITHMETIC_WORDINGS))[split]
    for a, op, b in _split_of(_problems(), TEST_ARITHMETIC, "arithmetic-split")[split]:
        w = _rng("arithmetic", a, op, b).choice(ways)
        answer = a + b if op == "+" else a - b if op == "-" else a * b
        yield _row(f"arithmetic/{a}{op}{b}/w{w}", "arithmetic",
                   ARITHMETIC_WORDINGS[w].format(a=a, op=op, b=b), {"answer": answer}, solution=str(answer))


def _fact_rows(split: str) -> Iterator[dict]:
    for k, question in enumerate(_split_of(list(FACTS), TEST_FACTS, "facts")[split]):
        for w in wordings("fact", len(FACT_WORDINGS))[split]:
            answers = list(FACTS[question])
            yield _row(f"fact/{list(FACTS).index(question)}/w{w}", "fact", FACT_WORDINGS[w].format(question=question),
                       {"answers": answers}, solution=answers[0])


def rows(split: str) -> list[dict]:
    """The split's rows, interleaved by category (each category in its own seeded order)."""
    by_category: dict[str, list[dict]] = {}
    for row in [*_constraint_rows(split), *_arithmetic_rows(split), *_fact_rows(split)]:
        by_category.setdefault(row["category"], []).append(row)
    for category, group in by_category.items():
        _rng("order", split, category).shuffle(group)
    longest = max(map(len, by_category.values()))
    return [group[i] for i in range(longest) for group in by_category.values() if i < len(group)]
