"""The evaluate stage: figures for this iteration's policy and reward model, stored in `iter-K/evaluate/`.

- checked accuracy of greedy and of sampled answers on held-out prompts (tasks with a checker),
  each with a 95% Wilson interval, and per `category` where the prompts have one;
- reward-model accuracy on held-out pairs (chosen scored above rejected), with its interval;
- win rate of the new policy against the previous one under a judge: a likelihood judge (no
  order to be biased by) or the pipeline's judge (pairwise judges ask both orders themselves).
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import datasets

from rlaif.config import EvaluateConfig, PipelineConfig
from rlaif.engines import GenerationRequest, resolve_model
from rlaif.engines.ledger import digest
from rlaif.engines.vllm import VLLMEngine
from rlaif.errors import ConfigError
from rlaif.functions import load_function
from rlaif.inputs import read_prompts
from rlaif.judges import CandidateItem, PairItem, build_judge
from rlaif.judges.likelihood import LikelihoodJudge
from rlaif.records import SamplingParams
from rlaif.runs import dump_json, iteration_dir, now, previous_policy
from rlaif.stages.export import load_export
from rlaif.stats import wilson

log = logging.getLogger(__name__)


def proportion(k: float, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"value": k / n if n else None, "ci95": [lo, hi], "n": n}


def answers(engine, prompts: datasets.Dataset, *, temperature: float, n: int, max_new_tokens: int,
            seed: int) -> list[list[str]]:
    """n answers per prompt (greedy when temperature is 0)."""
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens)
    results = engine.generate([GenerationRequest(prompt=m, params=params, seed=seed) for m in prompts["messages"]])
    return [[c.text for c in r.completions] or [""] * n for r in results]


def reads_columns(checker) -> bool:
    """A checker with TRL's reward signature, `f(completions, **columns)`, rather than `f(answer, solution)`."""
    try:
        return "completions" in inspect.signature(checker).parameters
    except (TypeError, ValueError):
        return False


def check_columns(checker, prompts: datasets.Dataset, solution_column: str) -> None:
    """Refuse before generating when the prompts lack a column the checker reads."""
    if not reads_columns(checker):
        if solution_column not in prompts.column_names:
            raise ConfigError(f"field 'evaluate.solution_column': the prompts have no {solution_column!r} column "
                              f"(they have {prompts.column_names})")
        return
    params = inspect.signature(checker).parameters.values()
    needed = [p.name for p in params if p.default is p.empty and p.name not in ("completions", "prompts")
              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    missing = [c for c in needed if c not in prompts.column_names]
    if missing:
        raise ConfigError(f"field 'evaluate.checker': it reads column(s) {missing} that the prompts lack "
                          f"(they have {prompts.column_names})")


def passed(checker, prompts: datasets.Dataset, outs: list[list[str]], solution_column: str) -> list[list[bool]]:
    """Per prompt, whether each answer passes: `checker(answer, solution)`, or a TRL-signature checker
    called with every prompt column, where a reward of at least .5 passes (None does not)."""
    if not reads_columns(checker):
        return [[bool(checker(a, sol)) for a in texts] for texts, sol in zip(outs, prompts[solution_column])]
    index = [i for i, texts in enumerate(outs) for _ in texts]
    columns = {c: [column[i] for i in index] for c, column in prompts.to_dict().items() if c != "id"}
    values = checker(completions=[[{"role": "assistant", "content": a}] for texts in outs for a in texts],
                     prompts=columns.pop("messages"), **columns)
    flat = iter([v is not None and v >= 0.5 for v in values])
    return [[next(flat) for _ in texts] for texts in outs]


def accuracy(checker, prompts: datasets.Dataset, outs: list[list[str]], solution_column: str,
             held_out: list[str] = ()) -> dict:
    """Share of answers that pass, with a 95% Wilson interval; `by_category` too where prompts have a category,
    and, with `held_out` categories, `by_split`: the categories training never showed apart from the others."""
    ok = passed(checker, prompts, outs, solution_column)
    result = proportion(sum(map(sum, ok)), sum(map(len, ok)))
    # answers passed per prompt, in prompt order, and which prompts: two policies' rates on the same prompts
    # can then be compared by a paired test (`rlaif compare`), far more sharply than by their intervals
    result["passed_per_prompt"] = [int(sum(row)) for row in ok]
    result["prompts_digest"] = prompts_digest(prompts)
    if "category" in prompts.column_names:
        groups: dict[str, list[bool]] = {}
        for category, row in zip(prompts["category"], ok):
            groups.setdefault(str(category), []).extend(row)
        result["by_category"] = {c: proportion(sum(g), len(g)) for c, g in sorted(groups.items())}
        if held_out:
            split = {"held-out categories": [x for c, g in groups.items() if c in held_out for x in g],
                     "seen categories": [x for c, g in groups.items() if c not in held_out for x in g]}
            result["by_split"] = {name: proportion(sum(g), len(g)) for name, g in split.items()}
    return result


def prompts_digest(prompts: datasets.Dataset) -> str:
    """A short hash of the prompts' ids (else their messages), in order: equal digests mean the same prompts."""
    column = prompts["id"] if "id" in prompts.column_names else prompts["messages"]
    return digest(list(column))[:16]


def checked_accuracy(engine, prompts: datasets.Dataset, checker, solution_column: str, *, temperature: float = 0.0,
                     n: int = 1, max_new_tokens: int = 32, seed: int = 0, held_out: list[str] = ()) -> dict:
    """Share of answers the checker accepts, with a 95% Wilson interval over all answers."""
    check_columns(checker, prompts, solution_column)
    outs = answers(engine, prompts, temperature=temperature, n=n, max_new_tokens=max_new_tokens, seed=seed)
    return accuracy(checker, prompts, outs, solution_column, held_out)


def reward_model_accuracy(path: str, pairs: datasets.Dataset, *, batch_size: int = 64, device: str = "auto") -> dict:
    """How often the reward model scores the chosen response above the rejected one on held-out pairs."""
    from rlaif.judges.reward_model import RewardModelJudge

    judge = RewardModelJudge(path, device=device, batch_size=batch_size)
    items = [CandidateItem(prompt=p, text=c[-1]["content"], columns={}) for p, c in zip(pairs["prompt"], pairs["chosen"])]
    items += [CandidateItem(prompt=p, text=r[-1]["content"], columns={}) for p, r in zip(pairs["prompt"], pairs["rejected"])]
    scores = [s.score for s in judge.score(items)]
    chosen, rejected = scores[: len(pairs)], scores[len(pairs) :]
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected))
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {**proportion(wins, len(pairs)), "mean_margin": sum(margins) / len(margins)}


def win_rate(judge, prompts: datasets.Dataset, new: list[str], old: list[str]) -> dict:
    """P(new beats old) under `judge`, averaged over prompts; identical answers count as ties (.5).

    A pairwise judge compares each pair in both orders itself (its `preference` averages them);
    a scoring judge (likelihood, reward model, verifier) has no order: the higher score wins.
    """
    differ = [i for i, (a, b) in enumerate(zip(new, old)) if a != b]
    prefs = {i: 0.5 for i in range(len(new)) if i not in set(differ)}
    rows = prompts.select(differ) if differ else None
    if differ and hasattr(judge, "compare"):
        pairs = [PairItem(prompt_id=str(rid), prompt=m, a=0, b=1, text_a=new[i], text_b=old[i])
                 for i, rid, m in zip(differ, rows["id"], rows["messages"])]
        for i, j in zip(differ, judge.compare(pairs)):
            prefs[i] = 0.5 if j.preference is None else j.preference
    elif differ:
        extra = [c for c in rows.column_names if c not in ("id", "messages")]
        items = [CandidateItem(prompt=row["messages"], text=t, columns={c: row[c] for c in extra})
                 for row, i in zip(rows, differ) for t in (new[i], old[i])]
        scores = [s.score for s in judge.score(items)]
        for k, i in enumerate(differ):
            a, b = scores[2 * k], scores[2 * k + 1]
            prefs[i] = 0.5 if a is None or b is None or a == b else float(a > b)
    wins = sum(prefs.values())
    decided = [p for p in prefs.values() if p != 0.5]
    return {**proportion(wins, len(new)), "ties": len(new) - len(decided), "judge": getattr(judge, "kind", "?")}


def held_out_prompts(e: EvaluateConfig) -> datasets.Dataset:
    """The first `evaluate.limit` prompts of `evaluate.prompts`."""
    if not e.prompts:
        raise ConfigError("field 'evaluate.prompts' is required: held-out prompts (a file or a source such as toy:test)")
    prompts, _ = read_prompts(e.prompts)
    return prompts.select(range(min(e.limit, len(prompts))))


def policy_accuracy(cfg: PipelineConfig, model: str, field: str = "evaluate.policy") -> dict:
    """Greedy and sampled checked accuracy of one model on the held-out prompts (baselines, controls)."""
    e = cfg.evaluate
    if not e.checker:
        return {}
    prompts = held_out_prompts(e)
    checker = load_function(e.checker, "evaluate.checker")
    engine = _engine(resolve_model(model, field), e)
    try:
        gen = dict(max_new_tokens=e.max_new_tokens, seed=cfg.seed, held_out=e.held_out_categories)
        return {"model": model,
                "greedy_accuracy": checked_accuracy(engine, prompts, checker, e.solution_column, **gen),
                "sampled_accuracy": checked_accuracy(engine, prompts, checker, e.solution_column,
                                                     temperature=e.temperature, n=e.samples, **gen)}
    finally:
        engine.close()


def _policy_paths(cfg: PipelineConfig, run: str | Path, iteration: int) -> tuple[str | None, str | None]:
    e = cfg.evaluate
    new = e.policy or (str(iteration_dir(run, iteration) / "policy")
                       if (iteration_dir(run, iteration) / "policy").exists() else None)
    old = e.previous
    if old is None:
        prev = previous_policy(run, iteration)
        old = str(prev) if prev else (cfg.train.base or cfg.generate.model)
    return (resolve_model(new, "evaluate.policy") if new else None, resolve_model(old, "evaluate.previous") if old else None)


def _engine(path: str, e: EvaluateConfig):
    if e.engine == "vllm":
        return VLLMEngine(path, dtype=e.dtype, engine_kwargs=e.engine_kwargs)
    from rlaif.engines.transformers import TransformersEngine

    return TransformersEngine(path, device=e.device, dtype=e.dtype, batch_size=e.batch_size)


def run_evaluate(cfg: PipelineConfig, run: str | Path, *, iteration: int = 0, judge=None) -> dict:
    """Evaluate iteration K's policy (and reward model, if any); write `iter-K/evaluate/metrics.json`."""
    e = cfg.evaluate
    it_dir = iteration_dir(run, iteration)
    new_path, old_path = _policy_paths(cfg, run, iteration)
    metrics: dict = {"iteration": iteration, "policy": new_path, "previous": old_path, "at": now()}
    prompts = held_out_prompts(e)
    gen = dict(max_new_tokens=e.max_new_tokens, seed=cfg.seed)
    new_engine = _engine(new_path, e) if new_path else None
    if new_engine is not None and e.checker:
        checker = load_function(e.checker, "evaluate.checker")
        checked = dict(gen, held_out=e.held_out_categories)
        metrics["greedy_accuracy"] = checked_accuracy(new_engine, prompts, checker, e.solution_column, **checked)
        metrics["sampled_accuracy"] = checked_accuracy(new_engine, prompts, checker, e.solution_column,
                                                       temperature=e.temperature, n=e.samples, **checked)
    if new_engine is not None and old_path and e.judge and old_path != new_path:
        if judge is None:
            judge = _judge(cfg, e)
        new = [a[0] for a in answers(new_engine, prompts, temperature=0.0, n=1, **gen)]
        new_engine.close()
        old_engine = _engine(old_path, e)
        old = [a[0] for a in answers(old_engine, prompts, temperature=0.0, n=1, **gen)]
        if e.checker:
            checker = load_function(e.checker, "evaluate.checker")
            metrics["previous_greedy_accuracy"] = accuracy(checker, prompts, [[a] for a in old], e.solution_column)
        old_engine.close()
        metrics["win_rate"] = win_rate(judge, prompts, new, old)
    rm_path = e.reward_model or (str(it_dir / "reward_model") if (it_dir / "reward_model").exists() else None)
    pairs_path = Path(e.pairs) if e.pairs else it_dir / "export" / "preference"
    if rm_path and pairs_path.exists():
        export = load_export(pairs_path, "preference")
        held_out = export.get("test")
        if held_out is None:
            log.warning("evaluate: %s has no test split; the reward model is scored on its training pairs", pairs_path)
            held_out = export["train"]
        metrics["reward_model_accuracy"] = {**reward_model_accuracy(rm_path, held_out, batch_size=e.batch_size,
                                                                    device=e.device),
                                            "held_out": "test" in export}
    out = it_dir / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    dump_json(out / "metrics.json", metrics)
    return metrics


def _judge(cfg: PipelineConfig, e: EvaluateConfig):
    if e.judge == "pipeline":
        if getattr(cfg, "judge", None) is None:
            raise ConfigError("field 'evaluate.judge': 'pipeline' needs a judge section in the pipeline file")
        return build_judge(cfg.judge, seed=cfg.seed)
    return LikelihoodJudge(_engine(resolve_model(e.judge_model, "evaluate.judge_model"), e))


def summary_rows(metrics: dict) -> dict:
    """Flat rows for the CLI's summary table; greedy accuracy per category under it (all of them in metrics.json)."""
    rows = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and "value" in value:
            rows[key] = _with_ci(value)
            if key == "greedy_accuracy":
                rows.update({f"  {category}": _with_ci(v) for category, v in value.get("by_category", {}).items()})
                rows.update({f"  {split}": _with_ci(v) for split, v in value.get("by_split", {}).items()})
    return rows


def _with_ci(value: dict) -> str:
    lo, hi = value["ci95"]
    return f"{value['value']:.3f}  [{lo:.3f}, {hi:.3f}]  n={value['n']}"
