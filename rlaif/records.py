"""Records that cross the edges: input prompts, candidates, stage manifests.

Rows move between stages as Arrow tables (`datasets.Dataset`); these pydantic models validate
at the edges and document the columns. `CANDIDATE_FEATURES` is the Arrow schema of the
generate stage's output, less the input's extra columns which are carried through unchanged.
"""

from __future__ import annotations

from typing import Literal

import datasets
from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["system", "user", "assistant", "tool"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str


class Prompt(BaseModel):
    """One input prompt after normalisation: an id and a chat message list."""

    id: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)

    @field_validator("messages")
    @classmethod
    def _has_text(cls, messages: list[Message]) -> list[Message]:
        if not any(m.content.strip() for m in messages):
            raise ValueError("the prompt is empty")
        return messages


class SamplingParams(BaseModel):
    """Sampling settings of a request, recorded on every candidate."""

    n: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1)
    stop: list[str] = Field(default_factory=list)


class Candidate(BaseModel):
    """One generated response. `failure` is set (and `text` empty) when the row could not be generated."""

    prompt_id: str
    prompt: list[Message]
    candidate_index: int
    text: str
    num_tokens: int
    finish_reason: Literal["stop", "length", "error"]
    logprob_sum: float | None
    engine: str
    model: str
    sampling: SamplingParams
    seed: int
    failure: str | None = None


MESSAGES_FEATURE = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]

CANDIDATE_FEATURES = datasets.Features(
    {
        "prompt_id": datasets.Value("string"),
        "prompt": MESSAGES_FEATURE,
        "candidate_index": datasets.Value("int32"),
        "text": datasets.Value("string"),
        "num_tokens": datasets.Value("int32"),
        "finish_reason": datasets.Value("string"),
        "logprob_sum": datasets.Value("float64"),
        "engine": datasets.Value("string"),
        "model": datasets.Value("string"),
        "sampling": {
            "n": datasets.Value("int32"),
            "temperature": datasets.Value("float64"),
            "top_p": datasets.Value("float64"),
            "max_new_tokens": datasets.Value("int32"),
            "stop": [datasets.Value("string")],
        },
        "seed": datasets.Value("int64"),
        "failure": datasets.Value("string"),
    }
)
CANDIDATE_COLUMNS = tuple(CANDIDATE_FEATURES)


class FileRecord(BaseModel):
    """What a shard file was when it was written: a later read checks it is still that file."""

    bytes: int
    sha256: str


class ShardRecord(BaseModel):
    """A finished shard: what it holds and what it cost; `files` (table -> FileRecord) verifies it.

    Manifests written before shards were hashed have no `files`; they still load (with a warning),
    and their shards are checked for presence and row counts only.
    """

    rows: dict[str, int]
    seconds: float
    counts: dict[str, int | float] = Field(default_factory=dict)
    files: dict[str, FileRecord] = Field(default_factory=dict)


class StageManifest(BaseModel):
    """`manifest.json` of one stage directory: enough to resume, refuse or report."""

    stage: str
    config_hash: str
    input_fingerprint: str
    config: dict
    num_shards: int
    shard_size: int
    shards: dict[str, ShardRecord] = Field(default_factory=dict)
    status: Literal["running", "complete"] = "running"
    started_at: str
    finished_at: str | None = None
    seconds: float = 0.0
    versions: dict[str, str] = Field(default_factory=dict)
    summary: dict = Field(default_factory=dict)

    def finished(self) -> set[int]:
        return {int(k) for k in self.shards}


# ---------------------------------------------------------------- judge stage tables (contract)
# iter-K/judge/scores/part-*.parquet: one row per candidate. Columns:
#   prompt_id, candidate_index, prompt (messages), text, num_tokens, finish_reason, failure (the
#   generation failure, carried from the candidate), the candidate's extra input columns (e.g.
#   solution, category), and the judge's:
#   score (float|null: expected rubric score, likelihood, reward, verifier value, or the
#   Bradley-Terry strength for pairwise judges), score_distribution (list[float]|null: probability
#   per score value for rubric judges), strength (float|null) and rank (int|null, 0 = best) from
#   the ranking, judge_failure (str|null), raw_text (str|null, when text was parsed), and provenance:
#   judge_kind, judge_model, judge_engine, template_name, template_sha256.
# iter-K/judge/comparisons/part-*.parquet (pairwise judges): one row per compared pair, both orders:
#   prompt_id, candidate_a, candidate_b (indices), p_a_first (P("1") with A shown first),
#   p_b_first (P("1") with B shown first), preference (P(A > B) = (p_a_first + 1 - p_b_first) / 2),
#   consistent (bool: both orders prefer the same side), tie (bool: |preference - .5| < tie band),
#   raw_text_ab, raw_text_ba (str|null), judge_failure (str|null), and the same provenance columns.


class Judgment(BaseModel):
    """Provenance and verdict of one pairwise comparison (a row of the comparisons table)."""

    prompt_id: str
    candidate_a: int
    candidate_b: int
    p_a_first: float | None
    p_b_first: float | None
    preference: float | None
    consistent: bool | None
    tie: bool | None
    raw_text_ab: str | None = None
    raw_text_ba: str | None = None
    judge_failure: str | None = None
    judge_kind: str
    judge_model: str
    judge_engine: str
    template_name: str | None = None
    template_sha256: str | None = None


class PreferencePair(BaseModel):
    """A row of iter-K/filter/pairs: what the trainers and the review app read.

    `prompt`, `chosen`, `rejected` are chat message lists (TRL's conversational preference format:
    `chosen`/`rejected` hold the assistant turn only). Extra input columns (solution, category) are
    carried on the row too.
    """

    pair_id: str
    prompt_id: str
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    chosen_index: int
    rejected_index: int
    chosen_score: float | None
    rejected_score: float | None
    margin: float
    consistent: bool | None
    judge_kind: str
    judge_model: str
    template_sha256: str | None = None
    review_status: Literal["unreviewed", "agreed", "disagreed", "tie", "both-bad"] = "unreviewed"
