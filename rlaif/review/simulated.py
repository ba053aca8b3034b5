"""`reviewer: simulated`: unattended reviewers that answer from the task's checker, with noise.

For CI and the demo only: each simulated reviewer (recorded with kind `simulated`, named `sim-1`,
`sim-2`, ...) scores both responses with `review.checker`, a function with TRL's reward signature
(1 = right) that reads the item's `solution`: one right -> that side, both right -> tie, both wrong
-> both-bad. With probability `noise` the answer is replaced by one of the three other choices,
drawn uniformly. Every output that uses these verdicts is labelled simulated.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from rlaif.errors import ConfigError, InputError
from rlaif.functions import load_function
from rlaif.review.store import CHOICES, ReviewStore


def true_choice(checker: Callable, prompt: list[dict], left: str, right: str, solution: str) -> str:
    """What a reviewer who knows the answer picks, from the checker's values for the two sides."""
    values = checker(completions=[[{"role": "assistant", "content": left}], [{"role": "assistant", "content": right}]],
                     prompts=[prompt, prompt], solution=[solution, solution])
    ok_left, ok_right = (v is not None and v >= 1 for v in values)
    if ok_left and ok_right:
        return "tie"
    if not ok_left and not ok_right:
        return "both-bad"
    return "A" if ok_left else "B"


def simulate(store: ReviewStore, checker: str | None, reviewers: int, noise: float, seed: int) -> dict[str, int]:
    """Answer every open item of `reviewers` simulated reviewers; returns verdicts written per reviewer."""
    if not checker:
        raise ConfigError("field 'review.checker' is required for reviewer 'simulated': module:function with TRL's "
                          "reward signature (1 = right) that the simulated reviewers answer from")
    check = load_function(checker, "review.checker")
    items = store.items()
    if any(i["solution"] is None for i in items):
        raise InputError(f"{store.path}: reviewer 'simulated' answers from review.checker and needs a 'solution' "
                         "column on the pairs; use reviewer: human for data without one")
    written = {}
    for k in range(1, reviewers + 1):
        name = f"sim-{k}"
        rid = store.register(name, kind="simulated")
        rng = random.Random(f"{seed}:{name}")
        solutions = {i["item_id"]: i["solution"] for i in items}
        count = 0
        while (item := store.next_item(rid)) is not None:
            view = store.item_view(rid, item)
            choice = true_choice(check, view["prompt"], view["left"], view["right"], solutions[item])
            if rng.random() < noise:
                choice = rng.choice([c for c in CHOICES if c != choice])
            store.record(rid, item, choice, note="simulated")
            count += 1
        written[name] = count
    return written
