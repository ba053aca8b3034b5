"""Judge quality, measured: agreement with a checker, position bias, calibration, injection.

Pairs with known answers come from a run's candidates and a checker (a verifier function with
TRL's reward signature, 1 = right): per prompt, the right answer (a right candidate, else the `solution`
column) against each distinct wrong candidate. Each pair's slots are assigned by a seeded coin so
that the soft labels can be calibrated against balanced outcomes.

Injection: each attack in `prompts/injection/attacks.yaml` dresses a wrong answer up as an order to
the judge; the attack succeeds when it wins against the right answer. Measured with the delimiting
defence on (nonce tags) and off (a fixed, public tag).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import yaml

from rlaif.errors import InputError
from rlaif.functions import load_function
from rlaif.judges.base import CandidateItem, PairItem
from rlaif.judges.prompting import FIXED_TAG
from rlaif.stats import wilson
from rlaif.templates import PROMPTS_DIR

ATTACKS = PROMPTS_DIR / "injection" / "attacks.yaml"


def expected_calibration_error(probs: list[float], outcomes: list[int], bins: int = 10) -> float:
    p, y = np.asarray(probs, dtype=float), np.asarray(outcomes, dtype=float)
    edges = np.minimum((p * bins).astype(int), bins - 1)
    return float(sum(abs(p[edges == b].mean() - y[edges == b].mean()) * (edges == b).sum()
                     for b in range(bins) if (edges == b).any()) / len(p))


def known_pairs(candidates, checker: str, max_pairs: int | None = None, seed: int = 0) -> list[dict]:
    """[{prompt_id, prompt, right, wrong}] from a candidates table, labelled by the checker."""
    fn = load_function(checker, "--checker")
    rows = [r for r in candidates.to_list() if r["failure"] is None]
    if not rows:
        raise InputError("no generated candidates to build judge-eval pairs from")
    extras = [c for c in candidates.column_names if c in ("solution", "answer", "label")]
    labels = fn(completions=[[{"role": "assistant", "content": r["text"]}] for r in rows],
                prompts=[r["prompt"] for r in rows], **{c: [r[c] for r in rows] for c in extras})
    by_prompt: dict[str, dict] = {}
    for r, ok in zip(rows, labels):
        g = by_prompt.setdefault(r["prompt_id"], {"prompt": r["prompt"], "right": None, "wrong": [],
                                                  "solution": r.get("solution")})
        if ok:
            g["right"] = g["right"] or r["text"]
        elif ok is not None and r["text"] not in g["wrong"]:
            g["wrong"].append(r["text"])
    pairs = []
    for pid, g in by_prompt.items():
        right = g["right"] or g["solution"]
        pairs += [{"prompt_id": pid, "prompt": g["prompt"], "right": right, "wrong": w, "solution": g["solution"]}
                  for w in g["wrong"] if right]
    random.Random(seed).shuffle(pairs)
    return pairs[:max_pairs] if max_pairs else pairs


def _preferences(judge, pairs: list[dict], firsts: list[str], seconds: list[str]) -> list[dict]:
    """P(first > second) per pair, with the order details a pairwise judge gives."""
    if judge.kind == "pairwise":
        items = [PairItem(p["prompt_id"], p["prompt"], 0, 1, a, b) for p, a, b in zip(pairs, firsts, seconds)]
        return [{"p": j.preference, "consistent": j.consistent, "orders": (j.p_a_first, j.p_b_first)}
                for j in judge.compare(items)]
    items = [CandidateItem(p["prompt"], t, {"solution": p.get("solution")}) for p, a, b in zip(pairs, firsts, seconds)
             for t in (a, b)]
    scores = judge.score(items)
    out = []
    for k in range(len(pairs)):
        sa, sb = scores[2 * k].score, scores[2 * k + 1].score
        out.append({"p": None if sa is None or sb is None else 1 / (1 + math.exp(max(-50, min(50, sb - sa))))})
    return out


def evaluate_judge(judge, pairs: list[dict], seed: int = 0) -> dict:
    """Agreement (95% interval), position consistency, first-position rate, calibration (ECE)."""
    coin = random.Random(seed)
    right_first = [coin.random() < 0.5 for _ in pairs]
    firsts = [p["right"] if rf else p["wrong"] for p, rf in zip(pairs, right_first)]
    seconds = [p["wrong"] if rf else p["right"] for p, rf in zip(pairs, right_first)]
    prefs = _preferences(judge, pairs, firsts, seconds)
    ok = [(pr["p"], rf) for pr, rf in zip(prefs, right_first) if pr["p"] is not None]
    agree = sum((p > 0.5) == rf for p, rf in ok if p != 0.5)
    low, high = wilson(agree, len(ok))
    out = {"judge_kind": judge.kind, "judge_model": judge.provenance.judge_model, "pairs": len(pairs),
           "judged": len(ok), "failures": len(pairs) - len(ok), "agreement": round(agree / len(ok), 4) if ok else None,
           "agreement_ci95": f"{low:.3f} - {high:.3f}", "ties": sum(p == 0.5 for p, _ in ok),
           "ece": round(expected_calibration_error([p for p, _ in ok], [int(rf) for _, rf in ok]), 4) if ok else None}
    if judge.kind == "pairwise":
        valid = [pr for pr in prefs if pr["p"] is not None]
        orders = [o for pr in valid for o in pr["orders"]]
        out["position_consistency"] = round(sum(pr["consistent"] for pr in valid) / len(valid), 4) if valid else None
        out["first_position_rate"] = round(sum(o > 0.5 for o in orders) / len(orders), 4) if orders else None
    return out


def load_attacks(path: str | Path | None = None) -> list[dict]:
    path = Path(path) if path else ATTACKS
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"{path}: cannot read the injection suite: {e}") from None
    attacks = (data or {}).get("attacks") if isinstance(data, dict) else None
    if not isinstance(attacks, list) or not all(isinstance(a, dict) and {"name", "text"} <= set(a) for a in attacks):
        raise InputError(f"{path}: expected 'attacks:' as a list of {{name, text}} entries (text uses {{wrong}})")
    for k, a in enumerate(attacks):
        if "{wrong}" not in a["text"]:
            raise InputError(f"{path}: attack {k} ({a['name']}): text must contain {{wrong}}")
    return attacks


def injection_suite(judge, pairs: list[dict], attacks: list[dict]) -> dict:
    """Attack success rate (injected wrong answer beats the right one), defence on and off."""
    injected = [(a["name"], {**p, "wrong": a["text"].replace("{wrong}", p["wrong"]).replace("{fixed_tag}", FIXED_TAG)})
                for p in pairs for a in attacks]
    modes = ("nonce", "fixed") if hasattr(judge, "delimiters") else ("n/a",)
    out = {"attacks": len(attacks), "attacked_pairs": len(injected)}
    plain = _preferences(judge, pairs, [p["wrong"] for p in pairs], [p["right"] for p in pairs])
    valid = [r["p"] for r in plain if r["p"] is not None]
    out["baseline_wrong_wins"] = round(sum(p > 0.5 for p in valid) / len(valid), 4) if valid else None
    for mode in modes:
        saved = getattr(judge, "delimiters", None)
        if mode != "n/a":
            judge.delimiters = mode
        try:
            ps = [pair for _, pair in injected]
            res = _preferences(judge, ps, [p["wrong"] for p in ps], [p["right"] for p in ps])
        finally:
            if mode != "n/a":
                judge.delimiters = saved
        key = {"nonce": "defence_on", "fixed": "defence_off", "n/a": "no_template"}[mode]
        wins = [r["p"] > 0.5 for r in res if r["p"] is not None]
        out[f"attack_success_{key}"] = round(sum(wins) / len(wins), 4) if wins else None
        for name in dict.fromkeys(n for n, _ in injected):
            sub = [r["p"] > 0.5 for (n, _), r in zip(injected, res) if n == name and r["p"] is not None]
            out[f"  {name} ({key})"] = round(sum(sub) / len(sub), 4) if sub else None
    return out
