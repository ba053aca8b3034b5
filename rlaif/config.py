"""Pydantic models of a pipeline file: the one place where settings are defined and described.

A pipeline file has a top-level `seed` and one section per stage. A stage command reads its own
section; options and `--set key.path=value` override the file. Unknown keys are errors. Every
field's `description` is also its command-line option's help (`rlaif/cli_options.py`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlaif.errors import ConfigError


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


DTYPE = Literal["auto", "float32", "bfloat16", "float16"]


class EngineBlock(StrictModel):
    """Which engine runs which model, and the engine's options (shared by `generate` and `judge`).

    Fields are grouped: the engine and model; local engines (dtype, device, batch_size); vLLM
    (max_model_len ... engine_kwargs); OpenAI-compatible servers (base_url ... tokens_per_minute).
    Completed requests of the openai engine are kept in RUN/ledger.sqlite (docs/api-scale.md).
    """

    engine: Literal["transformers", "vllm", "openai"] = Field(
        "transformers", description="transformers (local HF model, CPU or GPU) | vllm (offline vLLM) | openai (any "
        "OpenAI-compatible server).")
    model: str | None = Field(None, description="A model name or path, or a registered source name (scheme:name, "
                              "e.g. toy:policy).")
    dtype: DTYPE = Field("auto", description="auto (float32 on CPU, bfloat16 on GPUs that support it) | float32 | "
                         "bfloat16 | float16.")
    device: str = Field("auto", description="Local engines: auto | cpu | cuda | cuda:1 ...")
    batch_size: int = Field(64, ge=1, description="Sequences per forward pass (prompts x n for generation).")
    max_model_len: int | None = Field(None, ge=1, description="vLLM: the longest prompt + completion, in tokens.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs one model is split over.")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="vLLM: the share of GPU memory (on CPU: of the NUMA node's memory) for the "
        "KV cache; default 0.9 on GPUs, 0.3 on CPU.")
    enforce_eager: bool = Field(False, description="vLLM: no CUDA graphs (starts faster, runs slower).")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="vLLM: passed to vllm.LLM as is.")
    base_url: str | None = Field(None, description="openai engine: the server's URL, e.g. http://127.0.0.1:8000/v1 "
                                 "(default: $OPENAI_BASE_URL, else OpenAI's).")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai engine: the NAME of the environment variable that "
                             "holds the API key (the key itself never goes into a file).")
    max_concurrency: int = Field(8, ge=1, description="openai engine: requests in flight at once.")
    timeout_s: float = Field(60.0, gt=0, description="openai engine: seconds one request may take.")
    max_retries: int = Field(5, ge=0, description="openai engine: retries of a failed request.")
    retry_backoff_s: float = Field(1.0, ge=0, description="openai engine: first wait of the exponential, jittered "
                                   "retry backoff (a Retry-After header wins).")
    requests_per_minute: float | None = Field(None, gt=0, description="openai engine: client-side request rate limit "
                                              "(keeps a hosted quota from being hammered).")
    tokens_per_minute: float | None = Field(None, gt=0, description="openai engine: client-side token rate limit "
                                            "(tokens estimated as prompt + max tokens).")


class GenerateConfig(EngineBlock):
    """The generate stage: prompts in, `n` candidates per prompt out.

    Fields are grouped: the input (input ... template); sampling (n ... stop); the run (shard_size, retry_failed, max_failure_rate); the Batch API
    (batch, batch_poll_s, batch_poll_max_s).
    """

    input: str | None = Field(None, description="Prompts: a JSONL, Parquet or CSV file, a saved datasets directory, "
                              "or a registered source (e.g. toy:train). Needs a 'prompt' or 'messages' column.")
    limit: int | None = Field(None, ge=1, description="Use only the first N prompts of the input.")
    skip: int = Field(0, ge=0, description="Leave out the first N prompts of the input (before limit), e.g. the "
                      "prompts another run uses.")
    prompt_column: str | None = Field(None, description="The column holding the prompt (a string or a chat message "
                                      "list); default 'messages' if present, else 'prompt'.")
    system_prompt: str | None = Field(None, description="Prepended as a system message.")
    template: str | None = Field(None, description="A Jinja2 generator template wrapping the user message: a name in "
                                 "prompts/generate/ or a path; it sees `prompt` and every input column.")
    n: int = Field(4, ge=1, le=1024, description="Candidates per prompt.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature; 0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    max_new_tokens: int = Field(256, ge=1, description="Longest completion, in tokens.")
    stop: list[str] = Field(default_factory=list, description="Strings that end a completion (cut from the text).")
    shard_size: int = Field(256, ge=1, description="Prompts per Parquet shard: the unit of resume and of seeding "
                            "(seed + shard index).")
    retry_failed: bool = Field(True, description="On a rerun, write again every finished shard holding rows that "
                               "failed transiently (network, timeout, server error, malformed answer), with the same "
                               "seed, so the rows that succeeded come out the same.")
    max_failure_rate: float = Field(0.5, ge=0, le=1, description="The stage fails (exit code 5, finished rows kept) "
                                    "when more than this share of its rows failed; all rows failing always fails it.")
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
    """LoRA through `peft` (the `train.lora` section; null = full fine-tuning)."""

    r: int = Field(16, ge=1, description="The adapter's rank.")
    alpha: int = Field(32, ge=1, description="The adapter's scaling.")
    dropout: float = Field(0.05, ge=0, lt=1, description="The adapter's dropout.")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Module names, or all-linear.")
    merge: bool = Field(False, description="Also save the merged full weights (what vLLM and the judge stage load "
                        "fastest); otherwise the checkpoint holds the adapter, loaded over its base.")


class MethodBlock(StrictModel):
    """One training method's own defaults (`train.dpo`, `train.sft`, ...), measured on the toy task.

    `train.learning_rate`, `train.beta` and `train.loss_type`, when set, win over these for any method.
    """

    learning_rate: float = Field(gt=0, description="Learning rate.")
    beta: float | None = Field(None, gt=0, description="DPO/KTO beta (strength of the pull to the reference).")
    loss_type: list[str] | None = Field(None, description="Loss(es): DPO a list (e.g. [sigmoid, sft]); KTO kto | "
                                        "apo_zero_unpaired; SFT nll | dft.")


# Plain DPO at lr 1e-4 made the toy policy worse; lr 1e-5 with beta .5 helped.
METHOD_DEFAULTS = {
    "rm": {"learning_rate": 1e-4},
    "sft": {"learning_rate": 1e-4, "loss_type": ["nll"]},
    "dpo": {"learning_rate": 1e-5, "beta": 0.5, "loss_type": ["sigmoid"]},
    "kto": {"learning_rate": 1e-5, "beta": 0.1, "loss_type": ["kto"]},
}


def _method(name: str):
    defaults = METHOD_DEFAULTS[name]
    return Field(default_factory=lambda: MethodBlock(**defaults),
                 description=f"{name}'s own defaults: " + ", ".join(f"{k} {v}" for k, v in defaults.items()) + ".")


class GrpoBlock(StrictModel):
    """GRPO settings (the `train.grpo` section)."""

    reward: str | None = Field(None, description="GRPO reward: module:function (a verifier with TRL's reward "
                               "signature), reward_model (this iteration's trained reward model), a path to a "
                               "sequence-classification reward model, or judge (the pipeline's scoring judge).")
    prompts: str | None = Field(None, description="A prompt file or source; default: the prompts of this iteration's "
                                "preference export. Extra columns (e.g. solution) reach the reward.")
    num_generations: int = Field(4, ge=2, description="Completions per prompt (the group).")
    max_completion_length: int = Field(256, ge=1, description="Longest completion, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    kl_beta: float = Field(0.0, ge=0, description="KL coefficient (0 = no reference model).")
    learning_rate: float = Field(1e-4, gt=0, description="GRPO's default learning rate (train.learning_rate wins).")


class TrainConfig(StrictModel):
    """The train stage (`train` section): TRL trainers over this iteration's export.

    Fields are grouped: what is trained (method ... input); optimisation (epochs ... max_length);
    the losses (beta, loss_type, loss_weights); the method defaults (rm, sft, dpo, kto, grpo);
    device and checkpoints (dtype ... seed).
    """

    method: Literal["rm", "dpo", "kto", "sft", "grpo"] | None = Field(
        None, description="rm | dpo | kto | sft | grpo (the CLI's first argument sets it).")
    base: str | None = Field(None, description="Model to start from; default the previous iteration's policy, else "
                             "generate.model.")
    reference: str | None = Field(None, description="DPO/KTO reference model; default the base.")
    input: str | None = Field(None, description="An export directory to read instead of iter-K/export/<kind>.")
    epochs: float = Field(1.0, gt=0, description="Passes over the export.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps (overrides epochs).")
    learning_rate: float | None = Field(None, gt=0, description="Learning rate; null = the method's default "
                                        "(train.<method>.learning_rate).")
    batch_size: int = Field(32, ge=1, description="Examples per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Steps whose gradients are summed per update.")
    lr_scheduler: str = Field("constant", description="A transformers scheduler name (constant, linear, cosine, ...).")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of the steps spent warming up the learning rate.")
    max_length: int = Field(512, ge=8, description="Longest prompt + completion, in tokens.")
    beta: float | None = Field(None, gt=0, description="DPO/KTO beta; null = the method's default.")
    loss_type: list[str] | None = Field(None, description="DPO loss(es), e.g. [sigmoid, sft]; KTO: kto | "
                                        "apo_zero_unpaired; SFT: nll | dft; null = the method's default.")
    loss_weights: list[float] | None = Field(None, description="DPO: a weight per loss in loss_type.")
    rm: MethodBlock = _method("rm")
    sft: MethodBlock = _method("sft")
    dpo: MethodBlock = _method("dpo")
    kto: MethodBlock = _method("kto")
    grpo: GrpoBlock = Field(default_factory=GrpoBlock, description="GRPO settings and its default learning rate.")
    dtype: DTYPE = Field("auto", description="auto (bfloat16 on GPUs that support it, else float32) | float32 | "
                         "bfloat16 | float16.")
    device: str = Field("auto", description="auto | cpu | cuda.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    lora: LoraBlock | None = Field(None, description="LoRA adapter settings; null = full fine-tuning.")
    save_steps: int = Field(50, ge=1, description="A resumable checkpoint every N steps.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept while training.")
    keep_checkpoints: bool = Field(False, description="Keep the checkpoints after a finished run.")
    logging_steps: int = Field(5, ge=1, description="Log the loss every N steps.")
    seed: int | None = Field(None, description="Training seed; null = the pipeline's seed.")

    @field_validator(*METHOD_DEFAULTS, mode="before")
    @classmethod
    def _keep_method_defaults(cls, value, info):
        """A method section that sets some fields keeps the method's defaults for the others."""
        return {**METHOD_DEFAULTS[info.field_name], **value} if isinstance(value, dict) else value

    def setting(self, method: str, name: str):
        """A setting as used for `method`: this section's value, else the method's own default."""
        value = getattr(self, name)
        return getattr(getattr(self, method), name, None) if value is None else value


class EvaluateConfig(StrictModel):
    """The evaluate stage (`evaluate` section): figures for this iteration's policy and reward model."""

    prompts: str | None = Field(None, description="Held-out prompts for checked accuracy and the win rate (a file or "
                                "a registered source, e.g. toy:test).")
    limit: int = Field(200, ge=1, description="How many held-out prompts.")
    checker: str | None = Field(None, description="module:function(completion, solution) -> bool; null = no checked "
                                "accuracy.")
    solution_column: str = Field("solution", description="The prompts' column the checker reads.")
    samples: int = Field(1, ge=1, description="Sampled answers per prompt at `temperature` (greedy is always one).")
    temperature: float = Field(1.0, gt=0, description="Temperature of the sampled answers.")
    max_new_tokens: int = Field(256, ge=1, description="Longest answer, in tokens.")
    policy: str | None = Field(None, description="The policy to evaluate; default iter-K/policy.")
    previous: str | None = Field(None, description="The policy it is compared with; default the previous iteration's, "
                                 "else train.base / generate.model.")
    reward_model: str | None = Field(None, description="The reward model to score; default iter-K/reward_model.")
    pairs: str | None = Field(None, description="Held-out preference pairs for the reward model; default the test "
                              "split of iter-K/export/preference.")
    judge: Literal["likelihood", "pipeline"] | None = Field(
        "likelihood", description="Who judges new-vs-previous answers for the win rate: likelihood (judge_model's "
        "log-prob of each answer), pipeline (the pipeline's judge section), or null (no win rate).")
    judge_model: str | None = Field(None, description="Model of the likelihood judge for the win rate.")
    batch_size: int = Field(64, ge=1, description="Sequences per forward pass.")
    device: str = Field("auto", description="auto | cpu | cuda.")
    dtype: DTYPE = Field("auto", description="auto | float32 | bfloat16 | float16.")
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="Engine of the held-out answers: transformers | vllm (much faster on real models).")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="vllm: passed to vllm.LLM as is (e.g. "
                                          "max_model_len, enforce_eager).")
    held_out_categories: list[str] = Field(default_factory=list, description="Categories the training data never "
                                           "shows (e.g. constraint types): their pass rate is also reported apart "
                                           "from the others'.")


class VerdictCalibration(StrictModel):
    """Contextual calibration of a pairwise judge's verdict tokens (Zhao et al. 2021), fitted by
    `rlaif judge-eval --fit-calibration PAIRS` on pairs disjoint from the ones it is used on."""

    bias: list[float] = Field(min_length=2, max_length=2, description="Subtracted from the renormalised log-probs "
                              "of the two verdict tokens (slot 1, slot 2) before they are compared.")
    temperature: float = Field(1.0, gt=0, description="The calibrated log-odds are divided by this.")
    fitted_on: str | None = Field(None, description="The pair set it was fitted on (path, sha256).")
    fitted_pairs: int | None = Field(None, ge=0, description="How many pairs it was fitted on.")


class JudgeConfig(EngineBlock):
    """The judge stage: candidates in, a `scores` table (and `comparisons` for pairwise judges) out.

    Fields are grouped: the judge (kind ... delimiters); verdict reading (mode ... tie_band); the
    likelihood judge (length_normalize); the verifier (verifier); ranking (schedule, ranking); the run
    (shard_size).
    """

    kind: Literal["pairwise", "pointwise", "likelihood", "reward-model", "verifier"] = Field(
        "likelihood", description="pairwise (A vs B, both orders) | pointwise (a rubric score per candidate) | "
        "likelihood (a reference model's log-prob of each candidate) | reward-model (a sequence classifier) | "
        "verifier (a Python function).")
    template: str | None = Field(None, description="A Jinja2 judge template: a name in prompts/judge/ or a path; "
                                 "default pairwise (pairwise judges) or additive (pointwise judges).")
    verdict_tokens: list[str] | None = Field(None, description="The allowed verdicts (single tokens), overriding the "
                                             "template's own `{#- verdicts: ... -#}` line.")
    aspects: list[str] = Field(default_factory=list, description="Pointwise: rate each aspect separately "
                               "(UltraFeedback style); the score is the mean over aspects.")
    delimiters: Literal["nonce", "fixed"] = Field(
        "nonce", description="nonce (candidates fenced by a tag absent from them, so it cannot be forged) | fixed (a "
        "constant tag: the undefended baseline).")
    mode: Literal["logprobs", "text", "cot"] = Field(
        "logprobs", description="logprobs (soft verdicts, one forward pass per order) | text (generate + strict "
        "parse) | cot (rationale, then verdict log-probs).")
    max_new_tokens: int = Field(8, ge=1, description="Verdict length in text mode.")
    cot_max_new_tokens: int = Field(256, ge=1, description="Rationale length in cot mode.")
    parse_retries: int = Field(2, ge=0, description="Re-asks (sampled) after a text verdict fails to parse.")
    tie_band: float = Field(0.05, ge=0, lt=0.5, description="|P(A>B) - .5| below this is a tie.")
    length_normalize: bool = Field(True, description="Likelihood judge: mean log-prob per token (true) or the sum; "
                                   "the end-of-sequence token is scored too.")
    verifier: str | None = Field(None, description="Verifier judge: module:function with TRL's reward signature "
                                 "f(completions, **columns).")
    schedule: Literal["all-pairs", "pivot", "knockout"] = Field(
        "all-pairs", description="Pairwise: all-pairs (N(N-1)/2 pairs) | pivot (each vs candidate 0) | knockout.")
    ranking: Literal["bradley-terry", "copeland"] = Field(
        "bradley-terry", description="Pairwise: bradley-terry (fitted on the soft preferences) | copeland (wins minus "
        "losses).")
    shard_size: int = Field(64, ge=1, description="Prompts' candidates per Parquet shard (the unit of resume).")
    calibration: VerdictCalibration | None = Field(None, description="Pairwise, logprobs mode: a fitted verdict "
                                                   "calibration, inline or the path of the JSON file judge-eval wrote.")

    @field_validator("calibration", mode="before")
    @classmethod
    def _calibration_file(cls, value):
        if isinstance(value, (str, Path)):
            try:
                return json.loads(Path(value).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{value}: cannot read the calibration file ({e})") from None
        return value


class ReviewConfig(StrictModel):
    """Human spot-check (the `review` section): which pairs people see, and the quality gate.

    Fields are grouped: the sample (sample_size ... oversample_inconsistent, seed); the assignment
    (assignment, reviewers, overlap); the gate (min_agreement, min_reviewed); unattended runs
    (reviewer ... noise).
    """

    sample_size: int | None = Field(None, ge=1, description="Pairs to review (default 100 when neither this nor "
                                    "sample_fraction is set).")
    sample_fraction: float | None = Field(None, gt=0, le=1, description="The share of all pairs to review instead.")
    uncertain_quantile: float = Field(0.25, ge=0, le=1, description="Pairs whose judge margin is in this lowest "
                                      "quantile are 'uncertain'.")
    oversample_uncertain: float = Field(3.0, ge=1, description="How many times more likely an uncertain pair is "
                                        "drawn (undone by weights when agreement is estimated).")
    oversample_inconsistent: float = Field(3.0, ge=1, description="How many times more likely a position-"
                                           "inconsistent pair is drawn.")
    assignment: Literal["all", "split"] = Field(
        "all", description="all (every reviewer sees the whole sample) | split (each reviewer gets a share, plus an "
        "overlap seen by all).")
    reviewers: list[str] = Field(default_factory=list, description="Reviewer names (required for split).")
    overlap: float = Field(0.2, ge=0, le=1, description="split: the share of the sample every reviewer sees.")
    min_agreement: float = Field(0.7, ge=0, le=1, description="The gate: lowest judge-human agreement (weighted; ties "
                                 "and both-bad count as not agreeing).")
    min_reviewed: int = Field(30, ge=0, description="The gate: fewest reviewed pairs.")
    reviewer: Literal["human", "simulated"] = Field(
        "human", description="human | simulated (answers from review.checker, labelled simulated everywhere).")
    checker: str | None = Field(None, description="Simulated reviewers: module:function with TRL's reward signature "
                                "(1 = right), called with the item's solution.")
    simulated_reviewers: int = Field(2, ge=1, le=20, description="How many simulated reviewers.")
    noise: float = Field(0.1, ge=0, le=1, description="The chance each simulated answer is wrong.")
    seed: int | None = Field(None, description="The sample's seed; default the pipeline's seed.")

    @model_validator(mode="after")
    def _one_sample_rule(self):
        if self.sample_size is not None and self.sample_fraction is not None:
            raise ValueError("set review.sample_size or review.sample_fraction, not both")
        if self.assignment == "split" and len(self.reviewers) < 2:
            raise ValueError("review.assignment 'split' needs review.reviewers: a list of at least two names")
        return self


class FilterConfig(StrictModel):
    """The filter stage (`filter` section): judged candidates in, preference pairs + dropped rows out.

    Fields are grouped: pair construction (strategy ... score_tie); filters of candidates
    (drop_failures ... max_repeated_ngram_ratio); filters of prompts and pairs (min_best_score ...
    length_bias_max_margin); duplicates (MinHash + LSH, dedup_*).
    """

    strategy: Literal["best-vs-worst", "best-vs-random", "all-above-margin", "top-k-vs-bottom-k"] = Field(
        "best-vs-worst", description="Pairs per prompt: best-vs-worst | best-vs-random | all-above-margin | "
        "top-k-vs-bottom-k. A pair's margin is 2 P(chosen > rejected) - 1 when the judge compared the two, else the "
        "score gap.")
    top_k: int = Field(1, ge=1, description="top-k-vs-bottom-k: each of the k best vs each of the k worst.")
    tie_band: float = Field(0.05, ge=0, lt=0.5, description="|P(A > B) - .5| below this is a tie (never a pair).")
    score_tie: float = Field(0.0, ge=0, description="A score gap at most this is a tie (never a pair).")
    drop_failures: bool = Field(True, description="Drop generation and judge failures (no score).")
    drop_truncated: bool = Field(True, description="Drop candidates with finish reason 'length'.")
    drop_empty: bool = Field(True, description="Drop blank candidates.")
    drop_degenerate: bool = Field(True, description="Drop repetition loops (a share of repeated n-grams of at least "
                                  "max_repeated_ngram_ratio).")
    degenerate_ngram: int = Field(3, ge=1, description="The n of the repeated n-grams (words, or characters for short "
                                  "texts).")
    max_repeated_ngram_ratio: float = Field(0.5, gt=0, le=1, description="Repeated n-gram share from which a text is "
                                            "degenerate.")
    min_best_score: float | None = Field(None, description="Drop a prompt whose best candidate scores under this (the "
                                         "judge's scale); null = off.")
    drop_inconsistent: bool = Field(True, description="Drop pairs whose verdict flips with the order.")
    min_margin: float | None = Field(None, description="Drop pairs whose margin is under this; null = off.")
    length_bias: bool = Field(False, description="Drop pairs whose chosen is much longer than the rejected while the "
                              "margin is small.")
    length_bias_ratio: float = Field(2.0, gt=1, description="length_bias: chosen at least this many times longer "
                                     "(characters).")
    length_bias_max_margin: float = Field(0.2, ge=0, description="length_bias: ... while the margin is under this.")
    dedup_prompts: bool = Field(True, description="Drop prompts that duplicate an earlier prompt (global, across "
                                "shards).")
    dedup_responses: bool = Field(True, description="Drop candidates that duplicate a better-ranked candidate of the "
                                  "same prompt.")
    dedup_threshold: float = Field(0.85, gt=0, le=1, description="Estimated Jaccard similarity from which two texts "
                                   "are duplicates.")
    dedup_num_perm: int = Field(256, ge=16, le=1024, description="MinHash permutations.")
    dedup_ngram: int = Field(5, ge=1, description="Character n-grams that MinHash signs.")


class ExportConfig(StrictModel):
    """The export stage (`export` section): the filter's pairs as TRL-ready datasets.

    The copy in the run directory (iter-K/export/<kind>/, where `rlaif train` reads) is always `hf`.
    """

    kind: Literal["preference", "unpaired", "sft"] = Field(
        "preference", description="preference (prompt/chosen/rejected: DPO, reward model) | unpaired "
        "(prompt/completion/label: KTO) | sft (the best candidate per prompt as messages).")
    format: Literal["hf", "trl", "jsonl", "parquet"] = Field(
        "hf", description="Format of the `out` copy: hf (save_to_disk, with provenance) | trl (save_to_disk, trainer "
        "columns only) | jsonl | parquet (one file per split).")
    conversational: bool = Field(True, description="Chat message lists (conversational) or TRL's standard text form "
                                 "(text).")
    test_size: float | None = Field(None, gt=0, description="The share (0 < x < 1) or number of prompts held out as a "
                                    "test split (split by prompt); null = none.")
    split_seed: int | None = Field(None, description="Seed of the split; default the pipeline's seed.")
    out: str | None = Field(None, description="Also write a copy here.")
    extra_pairs: str | None = Field(
        None, description="A function (module:function) that makes more training pairs from this iteration's "
        "candidates, e.g. rlaif.tasks:edit_pairs (answers edited to obey or break their constraint, labelled by the "
        "verifiers). It takes the candidates (a Dataset) and returns rows with prompt_id, prompt, chosen and rejected "
        "(text). They join the train split only, with `strategy` naming the function; kind preference only.")


class RayConfig(StrictModel):
    """The Ray executor (the `ray` section; used when `executor: ray`): engine replicas as Ray actors."""

    address: str | None = Field(None, description="A running cluster (ray://host:10001, host:6379, auto); default "
                                "$RAY_ADDRESS, else a local Ray instance is started for this command.")
    replicas: int = Field(2, ge=1, description="Engine replicas (actors); shards go to whichever is free.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per replica (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (1 = one vLLM replica per GPU; fractions "
                            "allowed).")
    torch_threads: int | None = Field(None, ge=1, description="torch threads inside each replica (default num_cpus, at "
                                      "least 1); float sums, and so judgments, can change with it.")
    local_cpus: int | None = Field(None, ge=1, description="Logical CPUs of a locally started instance (default the "
                                   "machine's, and at least replicas x num_cpus + 1).")


class LoopConfig(StrictModel):
    """The self-improving loop (`loop` section): how many iterations, what stops it, what is reported.

    With `train.method: null` the loop stops after export: a dataset-generation pipeline.
    """

    iterations: int = Field(2, ge=1, description="generate -> judge -> filter -> review -> export -> train -> "
                            "evaluate, this many times; iteration K generates with the policy K-1 trained.")
    review: bool = Field(True, description="Run the review stage and its gate in every iteration.")
    metric: Literal["greedy_accuracy", "win_rate"] = Field(
        "greedy_accuracy", description="What 'better' means for keeping the best policy and stopping early: "
        "greedy_accuracy (needs evaluate.checker) | win_rate.")
    patience: int = Field(0, ge=0, description="Stop after this many iterations without an improvement over min_delta "
                          "(0 = never).")
    min_delta: float = Field(0.0, ge=0, description="The smallest gain that counts as an improvement.")
    judge_follows_policy: bool = Field(False, description="The judge model is the current policy (Self-Rewarding).")
    control: bool = Field(False, description="Also train plain SFT on the same chosen answers from the same base, "
                          "evaluated beside the policy.")
    control_train: dict[str, Any] = Field(default_factory=dict, description="train fields changed for the control "
                                          "(e.g. {learning_rate: 1e-4}).")
    report_judge_accuracy: bool = Field(True, description="Evaluate the judge model as a policy too (a generative "
                                        "judge, not a reward model), so the report shows when the policy catches up "
                                        "with its judge.")
    train_reward_model: bool = Field(False, description="Also train a reward model on each iteration's preference "
                                     "export before the policy.")
    stop_on_judge_flags: bool = Field(True, description="Stop before export and training when the iteration's "
                                      "judge is flagged: first-position rate >= .9 in the judge stage, or on the "
                                      "anchor set no better than chance or position-biased.")
    anchor_pairs: str | None = Field(None, description="A labelled pair set (judge-eval's --pairs format) the "
                                     "iteration's judge is scored on every iteration: agreement, position "
                                     "consistency and first-position rate in loop.json and the report.")


class ModelPrice(StrictModel):
    """The price of one model behind an OpenAI-compatible API (an entry of the top-level `pricing` table)."""

    input_per_mtok: float = Field(..., ge=0, description="US dollars per million input (prompt) tokens.")
    output_per_mtok: float = Field(..., ge=0, description="US dollars per million output (completion) tokens.")
    batch_discount: float = Field(0.5, ge=0, le=1, description="The share taken off both prices for requests "
                                  "answered through the Batch API (0.5 on OpenAI).")


class PipelineConfig(StrictModel):
    """A whole pipeline file: a name, a seed, one section per stage."""

    name: str | None = Field(None, description="Run name: runs/NAME.")
    seed: int = Field(0, description="Base seed; shard i of a stage uses seed + i.")
    generate: GenerateConfig = Field(default_factory=GenerateConfig, description="The generate stage.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="The judge stage.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="The train stage.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="The evaluate stage.")
    review: ReviewConfig = Field(default_factory=ReviewConfig, description="The review stage and its gate.")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="The filter stage.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="The export stage.")
    executor: Literal["local", "ray"] = Field(
        "local", description="local (this process) | ray (engine replicas on a Ray cluster: the ray section, "
        "RAY_ADDRESS, or a local instance). Same output either way.")
    ray: RayConfig = Field(default_factory=RayConfig, description="The Ray executor.")
    loop: LoopConfig = Field(default_factory=LoopConfig, description="The self-improving loop.")
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
    payload = json.dumps([section.model_dump(mode="json", exclude=exclude), *extra], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
