"""The generate stage: prompts in, `n` candidate responses per prompt out.

`generate_shard` is the pure step (a Dataset of prompts -> a Dataset of candidates);
`generate` is the Python API over a whole Dataset; `run_generate` runs the stage over a run
directory in resumable, seeded shards (seed = base seed + shard index).
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import partial

import datasets

from rlaif.config import GenerateConfig, PipelineConfig, config_hash
from rlaif.engines import Engine, GenerationRequest, load_engine, resolve_model
from rlaif.engines.ledger import CallLedger, attach_ledger, usage_summary
from rlaif.errors import ConfigError
from rlaif.inputs import normalise_prompts, read_prompts
from rlaif.records import CANDIDATE_FEATURES, SamplingParams, StageManifest, with_columns
from rlaif.runs import ShardPlan, check_failure_rate, load_table, run_sharded, stage_dir
from rlaif.templates import Template, load_template

log = logging.getLogger(__name__)

# Settings that change speed, not output: changing them does not invalidate finished shards.
THROUGHPUT_ONLY = {"batch_size", "max_concurrency", "timeout_s", "max_retries", "input", "api_key_env",
                   "retry_backoff_s", "requests_per_minute", "tokens_per_minute", "batch", "batch_poll_s",
                   "batch_poll_max_s", "retry_failed", "max_failure_rate"}


def sampling_of(cfg: GenerateConfig) -> SamplingParams:
    return SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                          max_new_tokens=cfg.max_new_tokens, stop=list(cfg.stop))


def render_prompt(row: dict, system_prompt: str | None, template: Template | None) -> list[dict]:
    """The chat sent to the model: optional system message, last user message wrapped by the template."""
    messages = [dict(m) for m in row["messages"]]
    if template is not None:
        last = max(i for i, m in enumerate(messages) if m["role"] == "user") if any(
            m["role"] == "user" for m in messages) else len(messages) - 1
        extras = {k: v for k, v in row.items() if k not in ("messages",)}
        messages[last]["content"] = template.render(**{**extras, "prompt": messages[last]["content"]})
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def shard_requests(prompts: datasets.Dataset, params: SamplingParams, seed: int, system_prompt: str | None = None,
                   template: Template | None = None) -> tuple[list[dict], list[list[dict]], list[GenerationRequest]]:
    """The rows of one shard, their rendered chats, and the engine requests for them."""
    rows = prompts.to_list()
    chats = [render_prompt(r, system_prompt, template) for r in rows]
    return rows, chats, [GenerationRequest(prompt=c, params=params, seed=seed) for c in chats]


def generate_shard(prompts: datasets.Dataset, engine: Engine, params: SamplingParams, seed: int,
                   system_prompt: str | None = None, template: Template | None = None) -> datasets.Dataset:
    """Candidates for one shard of prompts: `len(prompts) * params.n` rows, input columns carried through."""
    rows, chats, requests = shard_requests(prompts, params, seed, system_prompt, template)
    results = engine.generate(requests)
    extra_columns = [c for c in prompts.column_names if c not in ("id", "messages")]
    out: dict[str, list] = {c: [] for c in list(CANDIDATE_FEATURES) + extra_columns}
    sampling = params.model_dump()
    for row, chat, result in zip(rows, chats, results):
        completions = result.completions or [None] * params.n
        for k, c in enumerate(completions):
            out["prompt_id"].append(row["id"])
            out["prompt"].append(chat)
            out["candidate_index"].append(k)
            out["text"].append(c.text if c else "")
            out["num_tokens"].append(c.num_tokens if c else 0)
            out["finish_reason"].append(c.finish_reason if c else "error")
            out["logprob_sum"].append(c.logprob_sum if c else None)
            out["engine"].append(engine.name)
            out["model"].append(engine.model_id)
            out["sampling"].append(sampling)
            out["seed"].append(seed)
            out["failure"].append(result.failure)
            out["failure_retryable"].append(result.retryable if result.failure else None)
            for col in extra_columns:
                out[col].append(row[col])
    features = with_columns(CANDIDATE_FEATURES, {c: prompts.features[c] for c in extra_columns})
    return datasets.Dataset.from_dict(out, features=features)


def generate(dataset: datasets.Dataset, engine: Engine, *, n: int = 4, temperature: float = 1.0, top_p: float = 1.0,
             max_new_tokens: int = 256, stop: list[str] | None = None, seed: int = 0, shard_size: int = 256,
             system_prompt: str | None = None, template: str | None = None,
             prompt_column: str | None = None) -> datasets.Dataset:
    """Python API: `n` candidates for every prompt of `dataset`, seeded per shard exactly like the CLI."""
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop=stop or [])
    tpl = load_template(template, "generate", "template") if template else None
    prompts = normalise_prompts(dataset, prompt_column)
    shards = [
        generate_shard(prompts.select(range(s, min(s + shard_size, len(prompts)))), engine, params, seed + i,
                       system_prompt, tpl)
        for i, s in enumerate(range(0, len(prompts), shard_size))
    ]
    return datasets.concatenate_datasets(shards)


def run_generate(cfg: PipelineConfig, run: str, *, iteration: int = 0, overwrite: bool = False,
                 progress: bool = True, engine: Engine | None = None, record: bool = False) -> StageManifest:
    """Run the generate stage into `run/iter-K/generate/`, resuming finished shards.

    `engine`: an engine the caller owns and keeps (local executor), instead of loading `generate.model`.
    `record`: write the config to RUN/pipeline.yaml once the stage has accepted it (the CLI does).
    A rerun writes again the shards whose rows failed transiently (`generate.retry_failed`); a stage in
    which more than `generate.max_failure_rate` of the rows failed raises StageFailedError.
    """
    plan = partial(generate_plan, cfg, engine=engine, run=run, iteration=iteration, overwrite=overwrite,
                   progress=progress)
    manifest = run_sharded("generate", run, iteration, plan, overwrite=overwrite, progress=progress,
                           record=cfg if record else None)
    check_failure_rate(manifest, "failed", "candidates", cfg.generate.max_failure_rate,
                       lambda: first_failure(stage_dir(run, "generate", iteration)))
    return manifest


def first_failure(directory) -> str | None:
    """The first row failure of a finished generate stage (for the message of a failed stage)."""
    failures = load_table(directory, "candidates").select_columns(["failure"]).filter(lambda r: r["failure"] is not None)
    return failures[0]["failure"] if len(failures) else None


def generate_plan(cfg: PipelineConfig, upstream: None, engine: Engine | None = None, run: str | None = None,
                  iteration: int = 0, overwrite: bool = False, progress: bool = True) -> ShardPlan:
    """The generate stage's shards: `generate.shard_size` prompts each, seeded by the shard's index.

    An openai engine this stage builds answers from and into the run's call ledger (RUN/ledger.sqlite);
    with `generate.batch`, one Batch API job answers every unfinished shard into it first.
    """
    g = cfg.generate
    if not g.input:
        raise ConfigError("field 'generate.input' is required: a JSONL, Parquet or CSV file, a datasets directory, "
                          "or a registered source such as toy:train (flag --input)")
    if not g.model and engine is None:
        raise ConfigError("field 'generate.model' is required: a model name or path, or a registered source such as "
                          "toy:policy (flag --model)")
    if engine is None and g.engine != "openai":  # a bad model name fails here, before the run directory is touched
        resolve_model(g.model, "generate.model")
    template = load_template(g.template, "generate", "generate.template") if g.template else None
    prompts, fingerprint = read_prompts(g.input, g.prompt_column)
    if g.skip:
        prompts = prompts.select(range(min(g.skip, len(prompts)), len(prompts)))
    if g.limit is not None and g.limit < len(prompts):
        prompts = prompts.select(range(g.limit))
    starts = range(0, len(prompts), g.shard_size)
    rows = [min(g.shard_size, len(prompts) - s) for s in starts]
    borrowed = engine is not None and cfg.executor == "local"
    if g.batch and (engine.name if engine is not None else g.engine) != "openai":
        raise ConfigError("field 'generate.batch': the Batch API needs engine openai (flag --engine openai)")
    if g.batch and cfg.executor != "local":
        raise ConfigError("field 'generate.batch': a Batch API job is driven from this process; use executor local")
    ledger = CallLedger.for_run(run, "generate", iteration, fresh=overwrite) \
        if run is not None and engine is None and g.engine == "openai" else None
    params = sampling_of(g)

    def shard_input(i: int) -> datasets.Dataset:
        return prompts.select(range(starts[i], starts[i] + rows[i]))

    built: list = []  # the replica of a Batch API driver, reused by the shards

    def setup():
        if borrowed:
            return engine, template
        return built[0] if built else generator_replica(g, ledger)

    def prefetch(todo: list[int]) -> None:
        if g.batch and todo:
            built.append(setup())
            built[0][0].prefetch([shard_requests(shard_input(i), params, cfg.seed + i, g.system_prompt, template)[2]
                                  for i in todo], progress=progress)

    def summary(writer) -> dict:
        out = summarise(writer.manifest)
        return {**out, **usage_summary(ledger, "generate", iteration, cfg.pricing)} if ledger is not None else out

    return ShardPlan(
        config={**g.model_dump(mode="json", exclude=THROUGHPUT_ONLY), "seed": cfg.seed,
                "template_sha256": template.sha256 if template else None},
        config_hash=config_hash(g, cfg.seed, template.sha256 if template else None, exclude=THROUGHPUT_ONLY),
        input_fingerprint=fingerprint,
        shard_size=g.shard_size,
        shard_rows=rows,
        shard_input=shard_input,
        work=partial(generate_work, params=params, seed=cfg.seed, system_prompt=g.system_prompt),
        setup=setup, teardown=None if borrowed else close_generator, prefetch=prefetch, retry_failed=g.retry_failed,
        counts=lambda i, tables: shard_counts(rows[i], tables["candidates"]),
        summarise=summary,
        unit="prompts", executor=cfg.executor, ray_config=cfg.ray)


def shard_counts(prompts: int, candidates: datasets.Dataset) -> dict[str, int]:
    return {"prompts": prompts, "candidates": len(candidates),
            "failed": sum(f is not None for f in candidates["failure"]),
            "retryable_failures": sum(bool(r) for r in candidates["failure_retryable"]),
            "tokens": sum(candidates["num_tokens"]),
            **{f"finish_{k}": v for k, v in Counter(candidates["finish_reason"]).items()}}


def summarise(manifest: StageManifest) -> dict:
    """Totals over the shards, and the throughput of the time spent generating."""
    totals: Counter = Counter()
    for shard in manifest.shards.values():
        totals.update(shard.counts)
    seconds = sum(s.seconds for s in manifest.shards.values())
    return {**totals, "generation_seconds": round(seconds, 2),
            "prompts_per_s": round(totals.get("prompts", 0) / seconds, 2) if seconds else None,
            "tokens_per_s": round(totals.get("tokens", 0) / seconds, 1) if seconds else None}


def generator_replica(g: GenerateConfig, ledger: CallLedger | None = None) -> tuple[Engine, Template | None]:
    """What one worker holds (built where it runs: this process, or a Ray replica): engine and template."""
    template = load_template(g.template, "generate", "generate.template") if g.template else None
    engine = load_engine(g, "generate")
    attach_ledger(engine, ledger)
    return engine, template


def generate_work(state: tuple[Engine, Template | None], index: int, shard: datasets.Dataset, *,
                  params: SamplingParams, seed: int, system_prompt: str | None) -> dict[str, datasets.Dataset]:
    """One shard on any executor: seeded by its index, never by the worker."""
    engine, template = state
    return {"candidates": generate_shard(shard, engine, params, seed + index, system_prompt, template)}


def close_generator(state: tuple[Engine, Template | None]) -> None:
    state[0].close()
