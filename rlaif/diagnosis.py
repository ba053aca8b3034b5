"""Why a loop stopped, in the user's terms: which filter took the pairs, and how strong the models are.

A review gate that fails on "fewer than 30 pairs reviewed: 2 of 2" is true but does not help; the
user needs to hear that the filter kept 2 pairs because 2,993 prompts had no candidate above
`filter.min_best_score`, and that the judge model is no better than the policy it judges.
"""

from __future__ import annotations

# What each reason the filter stage records (rlaif.stages.filter) means, and the setting behind it.
FILTER_SETTINGS = {
    "low_quality": "prompts whose best candidate is below filter.min_best_score",
    "low_margin": "pairs whose margin is below filter.min_margin",
    "tie": "pairs tied (filter.tie_band, filter.score_tie)",
    "inconsistent": "pairs whose verdict flips with the order (filter.drop_inconsistent)",
    "length_bias": "pairs whose chosen is much longer at a small margin (filter.length_bias)",
    "too_few_candidates": "prompts with 1 candidate left after the filters",
    "duplicate_prompt": "prompts duplicating an earlier one (filter.dedup_prompts)",
    "duplicate_response": "candidates duplicating a better one of the same prompt (filter.dedup_responses)",
    "generation_failure": "candidates that failed to generate (filter.drop_failures)",
    "judge_failure": "candidates or comparisons the judge failed on (filter.drop_failures)",
    "truncated": "candidates cut at max_new_tokens (filter.drop_truncated)",
    "empty": "empty candidates (filter.drop_empty)",
    "degenerate": "repetitive candidates (filter.drop_degenerate)",
}
THRESHOLDS = {"low_quality": "min_best_score", "low_margin": "min_margin"}


def explain_gate_stop(cfg, record: dict, policy_quality: dict, judge_quality: dict) -> str:
    """One paragraph for a failed review gate: the gate's message, the judge's warning, the filter's drops, both
    models' accuracy.

    `record` is the loop's record of the iteration (its filter summary and review), `policy_quality` /
    `judge_quality` the policy's and the judge model's checked accuracy as the loop measured them.
    """
    parts = [record["review"]["message"]]
    judged = (record.get("stages", {}).get("judge") or {}).get("summary") or {}
    if judged.get("warning"):  # a position-biased judge's confident-looking pairs are noise
        parts.append(f"the judge stage warned: {judged['warning']}")
    parts.append(_filter_drops(cfg, record))
    parts.append(_models(cfg, policy_quality, judge_quality))
    return ". ".join(p.rstrip(".") for p in parts if p) + "."


def explain_judge_stop(cfg, run, record: dict, flags: list[str]) -> str:
    """One paragraph for a loop stopped on a flagged judge (`rlaif.judges.anchor.judge_flags`): the judge, each
    flag with its figures, what the filter kept from it, and the setting that lets the loop go on anyway."""
    judge = cfg.judge
    named = judge.model or judge.verifier or judge.kind
    template = f", template {judge.template}" if judge.template else ""
    parts = [f"judge gate failed for {run} iter-{record['iteration']:03d}: the {judge.kind} judge {named}{template} "
             f"is flagged, so its confident-looking pairs would train the policy on noise",
             *flags, _filter_drops(cfg, record),
             "fix the judge (judge.model, judge.template, judge.calibration) or set loop.stop_on_judge_flags: false "
             "to go on anyway"]
    return ". ".join(p.rstrip(".") for p in parts if p) + "."


def _filter_drops(cfg, record: dict) -> str:
    summary = (record.get("stages", {}).get("filter") or {}).get("summary") or {}
    if not summary:
        return ""
    drops = {k.removeprefix("dropped."): v for k, v in summary.items() if k.startswith("dropped.") and v}
    named = [f"{n:,} {FILTER_SETTINGS.get(reason, reason)}" + _threshold(cfg, reason)
             for reason, n in sorted(drops.items(), key=lambda kv: -kv[1])]
    return (f"{summary.get('pairs', 0):,} pairs kept from {summary.get('prompts', 0):,} prompts"
            + (": dropped " + "; ".join(named) if named else ""))


def _threshold(cfg, reason: str) -> str:
    field = THRESHOLDS.get(reason)
    value = getattr(cfg.filter, field) if field else None
    return f" = {value}" if value is not None else ""


def _accuracy(quality: dict) -> float | None:
    value = quality.get("greedy_accuracy") if quality else None
    return value.get("value") if isinstance(value, dict) else value


def _models(cfg, policy_quality: dict, judge_quality: dict) -> str:
    policy, judge = _accuracy(policy_quality), _accuracy(judge_quality)
    said = []
    if judge is not None:
        said.append(f"{cfg.judge.model} greedy accuracy {judge:.3f} as a policy")
    if policy is not None:
        said.append(f"the policy {policy_quality.get('model') or cfg.generate.model} {policy:.3f}")
    if not said:
        return ""
    text = ", ".join(said)
    if judge is not None and policy is not None and judge <= policy:
        text += " — the judge model is no stronger than the policy it judges, so it cannot teach it"
    elif judge is not None and judge < 0.5:
        text += " — the judge model is weak"
    return text
