"""`reviewer: simulated`: unattended reviewers that answer from the toy task's checker, with noise.

For CI and the demo only: each simulated reviewer (recorded with kind `simulated`, named `sim-1`,
`sim-2`, ...) checks both responses with `rlaif.toy.check` against the item's `solution`: one right
-> that side, both right -> tie, both wrong -> both-bad. With probability `noise` the answer is
replaced by one of the three other choices, drawn uniformly. Every output that uses these verdicts
is labelled simulated.
"""

from __future__ import annotations

import random

from rlaif.errors import InputError
from rlaif.review.store import CHOICES, ReviewStore
from rlaif.toy import check


def true_choice(left: str, right: str, solution: str) -> str:
    ok_left, ok_right = check(left, solution), check(right, solution)
    if ok_left and ok_right:
        return "tie"
    if not ok_left and not ok_right:
        return "both-bad"
    return "A" if ok_left else "B"


def simulate(store: ReviewStore, reviewers: int, noise: float, seed: int) -> dict[str, int]:
    """Answer every open item of `reviewers` simulated reviewers; returns verdicts written per reviewer."""
    items = store.items()
    if any(i["solution"] is None for i in items):
        raise InputError(f"{store.path}: reviewer 'simulated' answers from the toy checker and needs a 'solution' "
                         "column on the pairs (the toy task carries one); use reviewer: human for other data")
    written = {}
    for k in range(1, reviewers + 1):
        name = f"sim-{k}"
        rid = store.register(name, kind="simulated")
        rng = random.Random(f"{seed}:{name}")
        solutions = {i["item_id"]: i["solution"] for i in items}
        count = 0
        while (item := store.next_item(rid)) is not None:
            view = store.item_view(rid, item)
            choice = true_choice(view["left"], view["right"], solutions[item])
            if rng.random() < noise:
                choice = rng.choice([c for c in CHOICES if c != choice])
            store.record(rid, item, choice, note="simulated")
            count += 1
        written[name] = count
    return written
