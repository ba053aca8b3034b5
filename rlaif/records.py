"""The table contracts: the Arrow features of every stage table, and the records that cross the edges.

Rows move between stages as Arrow tables (`datasets.Dataset`); the features here are the one
definition of each table's columns. Every table also carries the input's extra columns (e.g.
`solution`, `category`) unchanged, after its own:

    iter-K/generate/candidates    CANDIDATE_FEATURES   one row per generated response
    iter-K/judge/scores           SCORE_FEATURES       one row per candidate: the judge's number and rank
    iter-K/judge/comparisons      COMPARISON_FEATURES  pairwise judges: one row per compared pair, both orders
    iter-K/filter/pairs           PAIR_FEATURES        preference pairs (TRL's conversational format + provenance)
    iter-K/filter/dropped         DROPPED_FEATURES     every dropped row with its reason
    iter-K/review/verdicts        VERDICT_FEATURES     pair_id -> the reviewers' majority status

The pydantic models validate at the edges (`SamplingParams` of a request, a judge's `Judgment`, a
`PreferencePair` read by the trainers and the review page, a stage's `manifest.json`).
"""

from __future__ import annotations

from typing import Literal

import datasets
from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]

STRING = datasets.Value("string")
FLOAT = datasets.Value("float64")
INT = datasets.Value("int32")
BOOL = datasets.Value("bool")
MESSAGES_FEATURE = [{"role": STRING, "content": STRING}]

# ---------------------------------------------------------------- generate
CANDIDATE_FEATURES = datasets.Features({
    "prompt_id": STRING,
    "prompt": MESSAGES_FEATURE,  # the chat as sent (system prompt and template applied)
    "candidate_index": INT,
    "text": STRING,
    "num_tokens": INT,
    "finish_reason": STRING,  # stop | length | error
    "logprob_sum": FLOAT,
    "engine": STRING,
    "model": STRING,
    "sampling": {"n": INT, "temperature": FLOAT, "top_p": FLOAT, "max_new_tokens": INT, "stop": [STRING]},
    "seed": datasets.Value("int64"),
    "failure": STRING,  # why the row could not be generated (then text is empty)
    "failure_retryable": datasets.Value("bool"),  # the failure was transient: a rerun of the stage retries the row
})
CANDIDATE_COLUMNS = tuple(CANDIDATE_FEATURES)

# ---------------------------------------------------------------- judge
# Which judge made a number: enough to trace it to the model and the template text.
PROVENANCE_COLUMNS = ("judge_kind", "judge_model", "judge_engine", "template_name", "template_sha256")
PROVENANCE_FEATURES = {c: STRING for c in PROVENANCE_COLUMNS}
# The candidate columns the scores table carries.
CARRIED_COLUMNS = ("prompt_id", "candidate_index", "prompt", "text", "num_tokens", "finish_reason", "failure")
JUDGE_FEATURES = {
    "score": FLOAT,  # expected rubric score, likelihood, reward, verifier value, or the Bradley-Terry strength
    "score_distribution": [FLOAT],  # rubric judges: probability per score value
    "strength": FLOAT,  # pairwise judges: the ranking's strength
    "rank": INT,  # 0 = best among the prompt's candidates
    "judge_failure": STRING,
    "raw_text": STRING,  # when a text verdict was parsed
    **PROVENANCE_FEATURES,
}
SCORE_FEATURES = datasets.Features({**{c: CANDIDATE_FEATURES[c] for c in CARRIED_COLUMNS}, **JUDGE_FEATURES})
COMPARISON_FEATURES = datasets.Features({
    "prompt_id": STRING,
    "candidate_a": INT,
    "candidate_b": INT,
    "p_a_first": FLOAT,  # P("1") with A shown first
    "p_b_first": FLOAT,  # P("1") with B shown first
    "preference": FLOAT,  # P(A > B) = (p_a_first + 1 - p_b_first) / 2
    "consistent": BOOL,  # both orders prefer the same side
    "tie": BOOL,  # |preference - .5| < the tie band
    "raw_text_ab": STRING,
    "raw_text_ba": STRING,
    "judge_failure": STRING,
    **PROVENANCE_FEATURES,
})

# ---------------------------------------------------------------- filter
PAIR_FEATURES = datasets.Features({
    "pair_id": STRING,
    "prompt_id": STRING,
    "prompt": MESSAGES_FEATURE,
    "chosen": MESSAGES_FEATURE,  # the assistant turn only, as TRL expects
    "rejected": MESSAGES_FEATURE,
    "chosen_index": INT,
    "rejected_index": INT,
    "chosen_score": FLOAT,
    "rejected_score": FLOAT,
    "margin": FLOAT,  # 2 P(chosen > rejected) - 1 when the judge compared the two, else the score gap
    "preference": FLOAT,
    "consistent": BOOL,
    "strategy": STRING,
    **PROVENANCE_FEATURES,
    "review_status": STRING,  # unreviewed | agreed | disagreed | tie | both-bad
})
DROPPED_FEATURES = datasets.Features({
    "prompt_id": STRING,
    "level": STRING,  # candidate | pair | prompt | comparison
    "reason": STRING,
    "detail": STRING,
    "candidate_index": INT,
    "other_index": INT,
    "text": STRING,
    "other_text": STRING,
    "score": FLOAT,
    "other_score": FLOAT,
    "margin": FLOAT,
})

# ---------------------------------------------------------------- review
VERDICT_FEATURES = datasets.Features({
    "pair_id": STRING,
    "review_status": STRING,
    "reviews": INT,
    "simulated": BOOL,
})

# Columns a stage adds: whatever else a table holds is carried from the input.
OWN_COLUMNS = set(CANDIDATE_COLUMNS) | set(JUDGE_FEATURES)


def extra_columns(features: datasets.Features) -> list[str]:
    """The input's carried columns (solution, category, ...) in a stage table: not one of rlaif's own."""
    return [c for c in features if c not in OWN_COLUMNS]


def with_columns(*parts: dict) -> datasets.Features:
    """A table's features from its parts in order, e.g. a stage's own columns and the input's carried ones."""
    return datasets.Features({name: feature for part in parts for name, feature in part.items()})


# ---------------------------------------------------------------- records at the edges
class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str


class SamplingParams(BaseModel):
    """Sampling settings of a request, recorded on every candidate."""

    n: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1)
    stop: list[str] = Field(default_factory=list)


class Judgment(BaseModel):
    """One pairwise comparison, both orders: a row of the comparisons table (COMPARISON_FEATURES)."""

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
    """A row of iter-K/filter/pairs (PAIR_FEATURES): what the trainers and the review page read."""

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
    preference: float | None = None
    consistent: bool | None
    strategy: str
    judge_kind: str
    judge_model: str
    judge_engine: str | None = None
    template_name: str | None = None
    template_sha256: str | None = None
    review_status: Literal["unreviewed", "agreed", "disagreed", "tie", "both-bad"] = "unreviewed"


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


# ---------------------------------------------------------------- rlaif.rewards' judgment log
# One row per rewarded completion. `comparisons` (pairwise judges) holds every comparison behind the
# reward, seen from this row: A is this completion, B the opponent (another row, or -1 for the
# reference column), p_a_first / p_b_first are P("1") with A / B shown first, and preference is
# P(this completion is better), both orders averaged.
COMPARISON_ENTRY = {
    "opponent": datasets.Value("int32"),
    "opponent_text": datasets.Value("string"),
    "p_a_first": datasets.Value("float64"),
    "p_b_first": datasets.Value("float64"),
    "preference": datasets.Value("float64"),
    "consistent": datasets.Value("bool"),
    "raw_text_ab": datasets.Value("string"),
    "raw_text_ba": datasets.Value("string"),
    "judge_failure": datasets.Value("string"),
}
REWARD_LOG_FEATURES = datasets.Features({
    "time": datasets.Value("float64"),  # unix seconds of the call
    "call": datasets.Value("int64"),  # calls of this reward function so far (0-based)
    "step": datasets.Value("int64"),  # the trainer's global step, null outside a trainer
    "reward_name": datasets.Value("string"),
    "row": datasets.Value("int32"),  # position in the call's batch
    "group": datasets.Value("int32"),  # the prompt group within the call
    "prompt": MESSAGES_FEATURE,
    "completion": datasets.Value("string"),
    "columns": datasets.Value("string"),  # the row's dataset columns (solution, reference, ...) as JSON
    "reward": datasets.Value("float64"),
    "score_distribution": [datasets.Value("float64")],
    "raw_text": datasets.Value("string"),
    "judge_failure": datasets.Value("string"),
    "comparisons": [COMPARISON_ENTRY],
    **PROVENANCE_FEATURES,
})
