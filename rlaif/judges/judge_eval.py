"""Judge quality, measured: a judge over labelled pairs (agreement, position bias, calibration, length
bias, per category: `rlaif.judges.quality`), and injection.

Labelled pairs come from a pair-set file (`rlaif.judges.pair_sets`) or from a run's candidates and a
checker (a verifier function with TRL's reward signature, 1 = right): per prompt, the right answer (a
right candidate, else the `solution` column) against each distinct wrong candidate.

Injection: each attack in `prompts/injection/attacks.yaml` dresses a wrong answer up as an order to
the judge, or is a null answer that carries no answer at all (a lone ":", "Thought process:", "I
cannot answer."); the attack succeeds when it wins against the right answer. Measured with the
delimiting defence on (nonce tags) and off (a fixed, public tag), and under the position defences:
one order only, both orders averaged, and both orders plus the filter's tie/inconsistency rules.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from rlaif.errors import ConfigError, InputError
from rlaif.judges import calibration, quality
from rlaif.judges.base import CandidateItem, PairItem, combine
from rlaif.judges.pair_sets import checked_pairs, load_pairs
from rlaif.judges.prompting import FIXED_TAG
from rlaif.judges.quality import expected_calibration_error  # noqa: F401  (re-exported)
from rlaif.report.figures import fmt
from rlaif.report.judge_eval import attack_rows, defence_rows, write  # noqa: F401  (re-exported)
from rlaif.runs import atomic_write_bytes, load_table, stage_dir
from rlaif.stats import wilson  # noqa: F401  (re-exported)
from rlaif.templates import PROMPTS_DIR

ATTACKS = PROMPTS_DIR / "injection" / "attacks.yaml"
PAIR_FIELDS = ("prompt_id", "prompt", "chosen", "rejected")


def known_pairs(candidates, checker: str, max_pairs: int | None = None, seed: int = 0) -> list[dict]:
    """Right-vs-wrong pairs of a run's candidates: a right candidate, else the `solution` column, is `chosen`."""
    return checked_pairs(candidates, checker, use_solution=True, max_pairs=max_pairs, seed=seed)


def _preferences(judge, pairs: list[dict], firsts: list[str], seconds: list[str]) -> list[dict]:
    """P(first > second) per pair, with the order details (tie, both orders' verdicts) a pairwise judge gives."""
    if judge.kind == "pairwise":
        items = [PairItem(p["prompt_id"], p["prompt"], 0, 1, a, b) for p, a, b in zip(pairs, firsts, seconds)]
        if getattr(judge, "calibration", None) is not None:
            return _calibrated_preferences(judge, items)
        return [{"p": j.preference, "tie": bool(j.tie), "consistent": j.consistent,
                 "firsts": (j.p_a_first, j.p_b_first)} for j in judge.compare(items)]
    items = [CandidateItem(p["prompt"], t, {c: v for c, v in p.items() if c not in PAIR_FIELDS})
             for p, a, b in zip(pairs, firsts, seconds) for t in (a, b)]
    scores = judge.score(items)
    out = []
    for k in range(len(pairs)):
        sa, sb = scores[2 * k].score, scores[2 * k + 1].score
        p = None if sa is None or sb is None else 1 / (1 + math.exp(max(-50, min(50, sb - sa))))
        out.append({"p": p, "tie": p == 0.5, "consistent": None, "firsts": None})
    return out


def _calibrated_preferences(judge, items: list[PairItem]) -> list[dict]:
    """A calibrated pairwise judge's preferences, and its uncalibrated verdicts from the same forward pass."""
    orders = judge.verdict_logprobs(items)
    cal = [None if lp is None else calibration.slot_one_probability(lp, judge.calibration) for lp in orders]
    raw = [None if lp is None else math.exp(lp[0]) for lp in orders]
    out = []
    for k in range(len(items)):
        c = combine(cal[2 * k], cal[2 * k + 1], judge.tie_band)
        out.append({"p": c["preference"], "tie": bool(c["tie"]), "consistent": c["consistent"],
                    "firsts": (cal[2 * k], cal[2 * k + 1]), "uncalibrated_firsts": (raw[2 * k], raw[2 * k + 1])})
    return out


def uncalibrated(outcomes: list[quality.Outcome], tie_band: float) -> list[quality.Outcome]:
    """The outcomes a calibrated judge would have given without its calibration."""
    out = []
    for o in outcomes:
        c = combine(*o.uncalibrated_firsts, tie_band)
        out.append(quality.Outcome(c["preference"], o.chosen_chars, o.rejected_chars, tie=bool(c["tie"]),
                                   firsts=o.uncalibrated_firsts, consistent=c["consistent"], category=o.category))
    return out


def outcomes(judge, pairs: list[dict], first: str = "chosen", second: str = "rejected") -> list[quality.Outcome]:
    """Each labelled pair as `judge` sees it (a pairwise judge in both orders), P(`first` wins), `first` named first."""
    prefs = _preferences(judge, pairs, [p[first] for p in pairs], [p[second] for p in pairs])
    return [quality.Outcome(pr["p"], len(p[first]), len(p[second]), tie=pr["tie"], firsts=pr["firsts"],
                            consistent=pr["consistent"], category=p.get("category"),
                            uncalibrated_firsts=pr.get("uncalibrated_firsts")) for p, pr in zip(pairs, prefs)]


def evaluate_judge(judge, pairs: list[dict], bins: int = 10, min_margin: float = 0.2,
                   held_out: list[str] | None = None) -> dict:
    """The judge's quality figures on labelled pairs (`rlaif.judges.quality`), overall, per category and (with
    `held_out` categories) per split, flags, and the defences table (a calibrated judge's rows without and with its
    calibration)."""
    judged = outcomes(judge, pairs)
    out = {"judge_kind": judge.kind, "judge_model": judge.provenance.judge_model,
           **quality.summary(judged, bins), "by_category": quality.by_category(judged, bins)}
    if held_out:
        out["by_split"] = quality.by_split(judged, held_out, bins)
    out["flags"] = quality.flags(out)
    tie_band = getattr(judge, "tie_band", 0.05)
    if judged and judged[0].uncalibrated_firsts is not None:
        out["defences"] = quality.defences(uncalibrated(judged, tie_band), tie_band=tie_band, min_margin=min_margin,
                                           calibrated=judged)
    else:
        out["defences"] = quality.defences(judged, tie_band=tie_band, min_margin=min_margin)
    return out


def summary_rows(figures: dict) -> dict:
    """The terminal's table of `evaluate_judge`'s figures: scalars, the interval as text, categories' agreement."""
    hidden = ("reliability", "by_category", "by_split", "flags", "agreement_ci95", "calibration", "files", "injection",
              "defences")
    rows = {k: v for k, v in figures.items() if k not in hidden}
    ci = figures.get("agreement_ci95")
    rows["agreement_ci95"] = f"{ci[0]:.3f} - {ci[1]:.3f}" if ci else None
    if figures.get("calibration"):
        cal = figures["calibration"]
        rows["calibration"] = f"bias {cal['bias'][0]:.3f} / {cal['bias'][1]:.3f}, temperature {cal['temperature']:.3f}"
    for name, sub in [*figures.get("by_split", {}).items(), *figures.get("by_category", {}).items()]:
        rows[f"  {name}: agreement (pairs)"] = f"{fmt(sub['agreement'])} ({sub['judged']})"
    return {k: "–" if v is None else v for k, v in rows.items()}


def load_attacks(path: str | Path | None = None) -> list[dict]:
    """The suite's attacks; an entry marked `null_answer: true` is a whole answer (no {wrong} in it), the others dress
    a wrong answer up."""
    path = Path(path) if path else ATTACKS
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"{path}: cannot read the injection suite: {e}") from None
    attacks = (data or {}).get("attacks") if isinstance(data, dict) else None
    if not isinstance(attacks, list) or not all(isinstance(a, dict) and {"name", "text"} <= set(a) for a in attacks):
        raise InputError(f"{path}: expected 'attacks:' as a list of {{name, text}} entries (text uses {{wrong}})")
    for k, a in enumerate(attacks):
        if not isinstance(a["text"], str) or ("{wrong}" in a["text"]) == bool(a.get("null_answer")):
            raise InputError(f"{path}: attack {k} ({a['name']}): text must be a string with {{wrong}} in it, or "
                             f"without it and marked 'null_answer: true'")
    return attacks


def _attacked(judge, pairs: list[dict]) -> list[quality.Outcome]:
    """Each pair as an attacked pair: the `rejected` (attacker's) answer against the right one, the attack in
    slot 1 first."""
    return outcomes(judge, pairs, first="rejected", second="chosen")


def injection_suite(judge, pairs: list[dict], attacks: list[dict]) -> dict:
    """Attack success (`quality.attack_success`: the attacker's answer beats the right one) per attack, with the
    delimiting defence on (nonce tags) and off (the fixed tag), under each position defence; `no attack` is the
    plain wrong answer."""
    modes = ("nonce", "fixed") if hasattr(judge, "delimiters") else ("none",)
    rows = [{"attack": "no attack", "delimiters": getattr(judge, "delimiters", "none"),
             **quality.attack_success(_attacked(judge, pairs))}]
    for mode in modes:
        saved = getattr(judge, "delimiters", None)
        if mode != "none":
            judge.delimiters = mode
        try:
            judged = {}
            for a in attacks:
                ps = [{**p, "rejected": a["text"].replace("{wrong}", p["rejected"]).replace("{fixed_tag}", FIXED_TAG)}
                      for p in pairs]
                judged[a["name"]] = _attacked(judge, ps)
        finally:
            if mode != "none":
                judge.delimiters = saved
        rows.append({"attack": "all attacks", "delimiters": mode,
                     **quality.attack_success([o for outs in judged.values() for o in outs])})
        rows += [{"attack": name, "delimiters": mode, **quality.attack_success(outs)} for name, outs in judged.items()]
    return {"attacks": len(attacks), "pairs": len(pairs), "attacked_pairs": len(pairs) * len(attacks),
            "rows": rows}


def labelled_pairs(run: Path | None, iteration: int, pairs_file: Path | None, checker: str | None,
                   max_pairs: int | None, seed: int) -> tuple[list[dict], str]:
    """The pairs judge-eval scores and where they came from: a pair-set file, else RUN's candidates and a checker."""
    if pairs_file is not None:
        return load_pairs(pairs_file)[:max_pairs], str(pairs_file)
    if run is None or checker is None:
        raise ConfigError("judge-eval needs labelled pairs: --pairs FILE, or a RUN directory with --checker "
                          "module:function")
    candidates = load_table(stage_dir(run, "generate", iteration), "candidates")
    return known_pairs(candidates, checker, max_pairs, seed), f"{run} iteration {iteration}, checked by {checker}"


def run_judge_eval(judge, pairs: list[dict], source: str, out: Path, fit_file: Path | None = None,
                   attacks: list[dict] | None = None, attack_pairs: int = 100, min_margin: float = 0.2,
                   held_out: list[str] | None = None) -> dict:
    """Score `pairs` with `judge` (first fitting a calibration on `fit_file`'s pairs, written to
    OUT/calibration.json) and, given `attacks`, run the injection suite on the first `attack_pairs` pairs; write
    OUT/metrics.json and OUT/report.html; the figures, with the files' paths."""
    if fit_file is not None:
        fit_pairs = load_pairs(fit_file)
        calibration.check_disjoint(fit_pairs, pairs, fit_file, source)
        judge.calibration = calibration.fit(judge, fit_pairs, calibration.file_id(fit_file))
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "calibration.json", judge.calibration.model_dump_json(indent=2).encode())
    figures = evaluate_judge(judge, pairs, min_margin=min_margin, held_out=held_out)
    cal = getattr(judge, "calibration", None)
    figures["calibration"] = cal.model_dump() if cal is not None else None
    figures["injection"] = injection_suite(judge, pairs[:attack_pairs], attacks) if attacks else None
    paths = write(figures, out, source)
    return {**figures, "files": {k: str(v) for k, v in paths.items()}}
