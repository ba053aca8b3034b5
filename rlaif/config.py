"""Pydantic models of a pipeline file: the one place where settings are defined.

A pipeline file has a top-level `seed` and one section per stage. A stage command reads its own
section; flags and `--set key.path=value` override the file. Unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlaif.errors import ConfigError


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EngineBlock(StrictModel):
    """Which engine runs which model, and the engine's options.

    Parameters that choose the engine:
        engine: `transformers` (local HF model, CPU or GPU), `vllm` (offline vLLM), `openai` (any
            OpenAI-compatible server).
        model: a model name or path; `toy:policy` / `toy:judge` name the offline toy models.
    Parameters of local engines:
        dtype: `auto` (float32 on CPU, bfloat16 on GPUs that support it), `float32`, `bfloat16`, `float16`.
        device: `auto`, `cpu`, `cuda`, `cuda:1`, ...
        batch_size: sequences per forward pass (prompts x n for generation).
    Parameters of vLLM:
        max_model_len, tensor_parallel_size, gpu_memory_utilization (on CPU: the share of the NUMA
        node's memory for the KV cache), enforce_eager, engine_kwargs (passed to `vllm.LLM` as is).
    Parameters of OpenAI-compatible servers:
        base_url, api_key_env (the name of the environment variable that holds the key; the key
        itself never goes into a file), max_concurrency, timeout_s, max_retries,
        retry_backoff_s (first backoff of the exponential, jittered retry wait; a Retry-After
        header wins), requests_per_minute / tokens_per_minute (optional client-side rate limits
        that keep a hosted quota from being hammered; tokens are estimated as prompt + max tokens;
        beyond them the limiter learns the server's budget from its x-ratelimit-* headers and
        Retry-After). Completed requests are kept in RUN/ledger.sqlite (docs/api-scale.md).
        vLLM's gpu_memory_utilization default is 0.3 on CPU (vLLM's own 0.92 fails on a shared
        node) and 0.9 on GPUs.
    """

    engine: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    batch_size: int = Field(64, ge=1)
    max_model_len: int | None = Field(None, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    enforce_eager: bool = False
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)
    retry_backoff_s: float = Field(1.0, ge=0)
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)


class GenerateConfig(EngineBlock):
    """The generate stage: prompts in, `n` candidates per prompt out.

    Parameters of the input:
        input: a JSONL, Parquet or CSV file, a saved `datasets` directory, or `toy:train` / `toy:test`.
        limit: use only the first N prompts of the input.
        prompt_column: the column holding the prompt (a string or a chat message list); default
            `messages` if present, else `prompt`.
        system_prompt: prepended as a system message.
        template: a Jinja2 generator template (a name from `prompts/generate/` or a path) that wraps
            the user message; it sees `prompt` and every input column.
    Parameters of sampling:
        n, temperature (0 = greedy), top_p, max_new_tokens, stop (strings that end a completion;
        they are cut from the text).
    Parameters of the run:
        shard_size: prompts per Parquet shard; the unit of resume and of seeding (seed + shard index).
    Parameters of the Batch API (`openai` engine):
        batch, batch_poll_s, batch_poll_max_s (described on the fields).
    """

    input: str | None = None
    limit: int | None = Field(None, ge=1)
    prompt_column: str | None = None
    system_prompt: str | None = None
    template: str | None = None
    n: int = Field(4, ge=1, le=1024)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1)
    stop: list[str] = Field(default_factory=list)
    shard_size: int = Field(256, ge=1)
    batch: bool = Field(False, description="openai engine: send every unfinished shard as one OpenAI Batch API job "
                        "(upload, create, poll, download; half the price on OpenAI, answers within 24 h). Failed or "
                        "expired requests are resubmitted once; a killed run re-attaches to its batch.")
    batch_poll_s: float = Field(10.0, gt=0, description="Batch API: first wait between polls of a batch's status, "
                                "in seconds; it doubles up to batch_poll_max_s.")
    batch_poll_max_s: float = Field(300.0, gt=0, description="Batch API: longest wait between polls, in seconds.")

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: list[str]) -> list[str]:
        if any(s == "" for s in value):
            raise ValueError("stop strings must be non-empty")
        return value


class LoraBlock(StrictModel):
    """LoRA through `peft` (the `train.lora` section; null = full fine-tuning).

    r, alpha, dropout: the adapter's rank, scaling and dropout. target_modules: module names, or
    `all-linear`. merge: also save the merged full weights (what vLLM and the judge stage load
    fastest); otherwise the checkpoint holds the adapter, which transformers loads over its base.
    """

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    merge: bool = False


class GrpoBlock(StrictModel):
    """GRPO settings (the `train.grpo` section).

    reward: `module:function` (a verifier with TRL's reward signature, e.g.
        `rlaif.toy:accuracy_reward`), `reward_model` (this iteration's trained reward model), a
        path to a sequence-classification reward model, or `judge` (the pipeline's `judge` section,
        a scoring judge, wrapped as a reward function).
    prompts: a prompt file (JSONL, Parquet, CSV, datasets directory, toy:train); default: the prompts
        of this iteration's preference export. Extra columns (e.g. `solution`) reach the reward.
    num_generations: completions per prompt (the group); max_completion_length: in tokens;
    temperature: sampling temperature of the rollouts; kl_beta: KL coefficient (0 = no reference model).
    """

    reward: str | None = None
    prompts: str | None = None
    num_generations: int = Field(4, ge=2)
    max_completion_length: int = Field(256, ge=1)
    temperature: float = Field(1.0, gt=0)
    kl_beta: float = Field(0.0, ge=0)


class TrainConfig(StrictModel):
    """The train stage (`train` section): TRL trainers over this iteration's export.

    Parameters that choose what is trained:
        method: rm | dpo | kto | sft | grpo (the CLI's first argument sets it).
        base: model to start from; default the previous iteration's policy, else `generate.model`.
        reference: DPO/KTO reference model; default the base.
        input: an export directory to read instead of `iter-K/export/<kind>`.
    Parameters of optimisation (null = the method's default, tuned on the toy task):
        epochs, max_steps (> 0 overrides epochs), learning_rate, batch_size,
        gradient_accumulation_steps, lr_scheduler, warmup_ratio, max_length (prompt + completion tokens).
    Parameters of the losses:
        beta (DPO/KTO), loss_type (DPO: a list, e.g. [sigmoid, sft]; KTO: kto | apo_zero_unpaired;
        SFT: nll | dft), loss_weights (DPO).
    Parameters of the device and of checkpoints:
        dtype (auto: bfloat16 on GPUs that support it, else float32), device (auto | cpu | cuda),
        gradient_checkpointing, lora (null = full fine-tuning), save_steps (a resumable checkpoint every
        N steps), save_total_limit, keep_checkpoints (keep them after a finished run), logging_steps,
        seed (null = the pipeline's seed).
    """

    method: Literal["rm", "dpo", "kto", "sft", "grpo"] | None = None
    base: str | None = None
    reference: str | None = None
    input: str | None = None
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0)
    batch_size: int = Field(32, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    lr_scheduler: str = "constant"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    max_length: int = Field(512, ge=8)
    beta: float | None = Field(None, gt=0)
    loss_type: list[str] | None = None
    loss_weights: list[float] | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    gradient_checkpointing: bool = False
    lora: LoraBlock | None = None
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    keep_checkpoints: bool = False
    logging_steps: int = Field(5, ge=1)
    seed: int | None = None
    grpo: GrpoBlock = Field(default_factory=GrpoBlock)


class EvaluateConfig(StrictModel):
    """The evaluate stage (`evaluate` section): figures for this iteration's policy and reward model.

    prompts: held-out prompts for checked accuracy and win rate (default toy:test); limit: how many.
    checker: `module:function(completion, solution) -> bool` (null = no checked accuracy);
        solution_column: the column it reads.
    samples: sampled answers per prompt at `temperature` (greedy is always one); max_new_tokens.
    policy / previous: the new and the old policy (default iter-K/policy and the previous
        iteration's policy, else train.base / generate.model).
    reward_model, pairs: the reward model and held-out preference pairs (default iter-K/reward_model
        and the `test` split of iter-K/export/preference).
    judge: who judges new-vs-previous answers for the win rate: `likelihood` (judge_model's
        log-prob of each answer), `pipeline` (the pipeline's `judge` section; pairwise judges ask
        both orders), or null (no win rate).
    judge_model: the model of the likelihood judge.
    batch_size, device, dtype: of the engines.
    """

    prompts: str = "toy:test"
    limit: int = Field(200, ge=1)
    checker: str | None = "rlaif.toy:check"
    solution_column: str = "solution"
    samples: int = Field(1, ge=1)
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(256, ge=1)
    policy: str | None = None
    previous: str | None = None
    reward_model: str | None = None
    pairs: str | None = None
    judge: Literal["likelihood", "pipeline"] | None = "likelihood"
    judge_model: str = "toy:judge"
    batch_size: int = Field(64, ge=1)
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class JudgeConfig(EngineBlock):
    """The judge stage: candidates in, a `scores` table (and `comparisons` for pairwise judges) out.

    Parameters that choose the judge:
        kind: `pairwise` (A vs B, both orders), `pointwise` (a rubric score per candidate),
            `likelihood` (a reference model's log-probability of each candidate), `reward-model`
            (a sequence-classification model), `verifier` (a Python function).
        model (+ the engine fields): the judge model; `toy:judge` is the toy likelihood judge.
        template: a Jinja2 judge template, a name in `prompts/judge/` or a path. Default: `pairwise`
            for pairwise judges, `additive` (Self-Rewarding 5-point rubric) for pointwise judges.
        verdict_tokens: the allowed verdicts (single tokens), overriding the template's own
            `{#- verdicts: ... -#}` line ("1 2" pairwise, "1 2 3 4 5" rubrics).
        aspects: pointwise only: rate each aspect separately (UltraFeedback style, the template sees
            `aspect`); the score is the mean over aspects.
        delimiters: `nonce` (candidates fenced by a tag derived from their content that does not occur
            in them, so it cannot be forged) or `fixed` (a constant tag: the undefended baseline).
    Parameters of verdict reading:
        mode: `logprobs` (soft verdict from the verdict tokens' probabilities, one forward pass per
            order), `text` (generate and parse strictly; for engines without log-probs), `cot`
            (generate a rationale, then read the verdict-token probabilities after it).
        max_new_tokens: verdict length in text mode; cot_max_new_tokens: rationale length in cot mode.
        parse_retries: re-asks (sampled, temperature 1) after a text verdict fails to parse.
        tie_band: |P(A>B) - .5| below this is a tie.
    Parameters of the likelihood judge:
        length_normalize: mean log-prob per token (True) or the sum (False); the end-of-sequence
            token is scored too, so a right answer that goes on is penalised.
    Parameters of the verifier:
        verifier: `module:function` with TRL's reward signature `f(completions, **columns)`.
    Parameters of ranking (pairwise judges):
        schedule: `all-pairs` (N(N-1)/2 pairs), `pivot` (each candidate vs candidate 0), `knockout`.
        ranking: `bradley-terry` (fitted on the soft preferences) or `copeland` (wins minus losses).
    Parameters of the run:
        shard_size: candidates' prompts per Parquet shard (the unit of resume).
    """

    kind: Literal["pairwise", "pointwise", "likelihood", "reward-model", "verifier"] = "likelihood"
    template: str | None = None
    verdict_tokens: list[str] | None = None
    aspects: list[str] = Field(default_factory=list)
    delimiters: Literal["nonce", "fixed"] = "nonce"
    mode: Literal["logprobs", "text", "cot"] = "logprobs"
    max_new_tokens: int = Field(8, ge=1)
    cot_max_new_tokens: int = Field(256, ge=1)
    parse_retries: int = Field(2, ge=0)
    tie_band: float = Field(0.05, ge=0, lt=0.5)
    length_normalize: bool = True
    verifier: str | None = None
    schedule: Literal["all-pairs", "pivot", "knockout"] = "all-pairs"
    ranking: Literal["bradley-terry", "copeland"] = "bradley-terry"
    shard_size: int = Field(64, ge=1)


class ReviewConfig(StrictModel):
    """Human spot-check (the `review` section): which pairs people see, and the quality gate.

    Parameters of the sample (drawn once, seeded, recorded in iter-K/review/review.sqlite):
        sample_size: pairs to review (default 100 when neither this nor sample_fraction is set).
        sample_fraction: the share of all pairs to review instead (0 < f <= 1).
        uncertain_quantile: pairs whose judge margin is in this lowest quantile are "uncertain".
        oversample_uncertain, oversample_inconsistent: how many times more likely an uncertain /
            position-inconsistent pair is drawn; undone by weights when agreement is estimated.
    Parameters of the assignment:
        assignment: `all` (every reviewer sees the whole sample, so inter-reviewer kappa exists) or
            `split` (each of `reviewers` gets a share, plus an `overlap` fraction seen by all).
        reviewers: reviewer names (required for `split`).
    Parameters of the gate (export and the loop refuse to go on when it fails):
        min_agreement: lowest judge-human agreement (weighted, ties and both-bad count as not agreeing).
        min_reviewed: fewest reviewed pairs.
    Parameters of unattended runs:
        reviewer: `human` or `simulated` (answers from the toy checker, labelled simulated everywhere).
        simulated_reviewers: how many simulated reviewers; noise: the chance each answer is wrong.
        seed: the sample's seed (default: the pipeline's seed).
    """

    sample_size: int | None = Field(None, ge=1)
    sample_fraction: float | None = Field(None, gt=0, le=1)
    uncertain_quantile: float = Field(0.25, ge=0, le=1)
    oversample_uncertain: float = Field(3.0, ge=1)
    oversample_inconsistent: float = Field(3.0, ge=1)
    assignment: Literal["all", "split"] = "all"
    reviewers: list[str] = Field(default_factory=list)
    overlap: float = Field(0.2, ge=0, le=1)
    min_agreement: float = Field(0.7, ge=0, le=1)
    min_reviewed: int = Field(30, ge=0)
    reviewer: Literal["human", "simulated"] = "human"
    simulated_reviewers: int = Field(2, ge=1, le=20)
    noise: float = Field(0.1, ge=0, le=1)
    seed: int | None = None

    @model_validator(mode="after")
    def _one_sample_rule(self):
        if self.sample_size is not None and self.sample_fraction is not None:
            raise ValueError("set review.sample_size or review.sample_fraction, not both")
        if self.assignment == "split" and len(self.reviewers) < 2:
            raise ValueError("review.assignment 'split' needs review.reviewers: a list of at least two names")
        return self


class FilterConfig(StrictModel):
    """The filter stage (`filter` section): judged candidates in, preference pairs + dropped rows out.

    Parameters of pair construction:
        strategy: `best-vs-worst` (one pair per prompt), `best-vs-random` (the best vs a random
            lower-scored candidate, seeded per prompt), `all-above-margin` (every pair whose margin
            reaches `min_margin`), `top-k-vs-bottom-k` (each of the `top_k` best vs each of the `top_k`
            worst). The margin of a pair is 2 P(chosen > rejected) - 1 when the judge compared the two
            (pairwise judges), else the score gap.
        tie_band: |P(A > B) - .5| below this is a tie; score_tie: a score gap at most this is a tie.
            Ties never become pairs.
    Filters of candidates (each on/off):
        drop_failures: generation failures and judge failures (parse or engine errors, no score).
        drop_truncated: finish reason `length`. drop_empty: blank text.
        drop_degenerate: repetition loops, a share of repeated n-grams (`degenerate_ngram`, over
            words, or characters for short texts) of at least `max_repeated_ngram_ratio`.
    Filters of prompts and pairs:
        min_best_score: drop a prompt whose best candidate scores under this (null = off; the scale is
            the judge's). drop_inconsistent: drop pairs whose verdict flips with the order.
        min_margin: drop pairs whose margin is under this (null = off).
        length_bias: drop pairs whose chosen is at least `length_bias_ratio` times longer (characters)
            than the rejected while the margin is under `length_bias_max_margin`.
    Duplicates (MinHash + LSH over character `dedup_ngram`-grams, `dedup_num_perm` permutations):
        dedup_prompts: drop prompts that duplicate an earlier prompt (global, across shards);
        dedup_responses: drop candidates that duplicate a better-ranked candidate of the same prompt;
        dedup_threshold: estimated Jaccard similarity from which two texts are duplicates.
    """

    strategy: Literal["best-vs-worst", "best-vs-random", "all-above-margin", "top-k-vs-bottom-k"] = "best-vs-worst"
    top_k: int = Field(1, ge=1)
    tie_band: float = Field(0.05, ge=0, lt=0.5)
    score_tie: float = Field(0.0, ge=0)
    drop_failures: bool = True
    drop_truncated: bool = True
    drop_empty: bool = True
    drop_degenerate: bool = True
    degenerate_ngram: int = Field(3, ge=1)
    max_repeated_ngram_ratio: float = Field(0.5, gt=0, le=1)
    min_best_score: float | None = None
    drop_inconsistent: bool = True
    min_margin: float | None = None
    length_bias: bool = False
    length_bias_ratio: float = Field(2.0, gt=1)
    length_bias_max_margin: float = Field(0.2, ge=0)
    dedup_prompts: bool = True
    dedup_responses: bool = True
    dedup_threshold: float = Field(0.85, gt=0, le=1)
    dedup_num_perm: int = Field(256, ge=16, le=1024)
    dedup_ngram: int = Field(5, ge=1)


class ExportConfig(StrictModel):
    """The export stage (`export` section): the filter's pairs as TRL-ready datasets.

    kind: `preference` (prompt/chosen/rejected for DPOTrainer and RewardTrainer), `unpaired`
        (prompt/completion/label for KTOTrainer) or `sft` (the best candidate per prompt as `messages`).
    format: of the copy written to `out`: `hf` (datasets.save_to_disk, with provenance columns),
        `trl` (save_to_disk with only the columns the trainer reads), `jsonl` or `parquet` (one file
        per split). The copy in the run directory (iter-K/export/<kind>/) is always `hf`.
    conversational: chat message lists (default) or TRL's standard text form.
    test_size: the share (0 < x < 1) or number of prompts held out as a `test` split (null = none),
        split by prompt so no prompt is in both; split_seed: its seed (default the pipeline's seed).
    out: also write a copy there.
    """

    kind: Literal["preference", "unpaired", "sft"] = "preference"
    format: Literal["hf", "trl", "jsonl", "parquet"] = "hf"
    conversational: bool = True
    test_size: float | None = Field(None, gt=0)
    split_seed: int | None = None
    out: str | None = None


class RayConfig(StrictModel):
    """The Ray executor (the `ray` section; used when `executor: ray`): engine replicas as Ray actors.

    address: a running cluster (`ray://host:10001`, `host:6379`, `auto`); default the RAY_ADDRESS
        environment variable, else a local Ray instance is started for this command.
    replicas: engine replicas (actors), each holding one engine; shards go to whichever is free.
    num_cpus, num_gpus: Ray resources per replica (`num_gpus: 1` = one vLLM replica per GPU;
        tensor-parallel replicas ask for `generate.tensor_parallel_size` GPUs). Fractions are allowed.
    torch_threads: torch threads inside each replica (default: num_cpus, at least 1). Set it
        explicitly: float sums, and so judgments, can change with the thread count.
    local_cpus: logical CPUs of a locally started instance (default: the machine's cores, and at
        least replicas x num_cpus + 1, so Ray Data's own tasks are never starved by the replicas).
    """

    address: str | None = None
    replicas: int = Field(2, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    torch_threads: int | None = Field(None, ge=1)
    local_cpus: int | None = Field(None, ge=1)


class LoopConfig(StrictModel):
    """The self-improving loop (`loop` section): how many iterations, what stops it, what is reported.

    iterations: generate -> judge -> filter -> review -> export -> train -> evaluate, this many times;
        iteration K generates with the policy iteration K-1 trained.
    review: run the review stage and its gate in every iteration (`review.reviewer` says who answers:
        `human` makes the loop wait for `rlaif review`, `simulated` answers from the task's checker).
    metric: what "better" means for keeping the best policy and stopping early: `greedy_accuracy`
        (needs `evaluate.checker`) or `win_rate` (new vs previous policy under the judge).
    patience: stop after this many iterations without an improvement over `min_delta` (0 = never).
    judge_follows_policy: the judge model is the current policy (Self-Rewarding LMs).
    control: also train plain SFT on the same chosen answers from the same base, evaluated beside the
        policy, so the preference step's own gain is measured; control_train: `train` fields changed
        for the control (e.g. {learning_rate: 1e-4}).
    report_judge_accuracy: evaluate the judge model as a policy too (tasks with a checker), so the
        report shows when the policy catches up with its judge.
    train_reward_model: also train a reward model (`rlaif train rm`) on each iteration's preference
        export before the policy (RLAIF: the policy's GRPO reward can then be `reward_model`).
    With `train.method: null` the loop stops after export: a dataset-generation pipeline.
    """

    iterations: int = Field(2, ge=1)
    review: bool = True
    metric: Literal["greedy_accuracy", "win_rate"] = "greedy_accuracy"
    patience: int = Field(0, ge=0)
    min_delta: float = Field(0.0, ge=0)
    judge_follows_policy: bool = False
    control: bool = False
    control_train: dict[str, Any] = Field(default_factory=dict)
    report_judge_accuracy: bool = True
    train_reward_model: bool = False


class ModelPrice(StrictModel):
    """The price of one model behind an OpenAI-compatible API (an entry of the top-level `pricing` table)."""

    input_per_mtok: float = Field(..., ge=0, description="US dollars per million input (prompt) tokens.")
    output_per_mtok: float = Field(..., ge=0, description="US dollars per million output (completion) tokens.")
    batch_discount: float = Field(0.5, ge=0, le=1, description="The share taken off both prices for requests "
                                  "answered through the Batch API (0.5 on OpenAI).")


class PipelineConfig(StrictModel):
    """A whole pipeline file. Later stages add their sections here."""

    name: str | None = None
    seed: int = 0
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    executor: Literal["local", "ray"] = "local"
    ray: RayConfig = Field(default_factory=RayConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    pricing: dict[str, ModelPrice] = Field(default_factory=dict, description="Prices by model name (as the "
                                           "generate/judge `model` field names it): turns the token usage of the "
                                           "openai engine into dollars in the stage summaries, `rlaif ledger` and "
                                           "the report.")


def _set_path(tree: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"{source}: '{dotted}' is not a key path (expected e.g. generate.n=8)")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: '{dotted}': '{key}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_set(item: str) -> tuple[str, Any]:
    """`key.path=value` -> (key.path, YAML-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value (e.g. --set generate.n=8)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{path}'")
            continue
        msg = e["msg"]
        if e["type"] == "literal_error":
            msg = f"got {e['input']!r}; {msg[0].lower() + msg[1:]}"
        else:
            msg = f"{msg} (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else msg
        lines.append(f"{source}: field '{path}': {msg}")
    return "\n".join(lines)


def load_yaml(path: str | Path) -> dict:
    """Read a pipeline file as a mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: pipeline file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (seed, generate, ...), got {type(data).__name__}")
    return data


def load_config(
    path: str | Path | None = None,
    sets: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> PipelineConfig:
    """Build the config from a file, then `--set` overrides, then explicit flags (which win).

    `flags` maps key paths (`generate.n`) to values; None values are ignored (flag not given).
    """
    tree = load_yaml(path) if path else {}
    source = str(path) if path else "config"
    for item in sets or []:
        key, value = parse_set(item)
        _set_path(tree, key, value, "--set")
    for key, value in (flags or {}).items():
        if value is not None:
            _set_path(tree, key, value, "flag")
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as e:
        if sets or flags:
            source = f"{source} (with overrides)"
        raise ConfigError(_format_error(e, source)) from None


def config_hash(section: BaseModel, *extra: Any, exclude: set[str] | None = None) -> str:
    """A stable hash of the settings that determine a stage's output (`exclude`: speed-only settings)."""
    import hashlib
    import json

    payload = json.dumps([section.model_dump(mode="json", exclude=exclude), *extra], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
