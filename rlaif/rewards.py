"""rlaif judges as reward functions for other trainers (TRL's GRPO/RLOO, and `rlaif serve` for the rest).

Each factory takes the judge stage's own config block (`JudgeConfig`, or its fields as keywords)
and returns a callable with TRL's reward signature, `f(completions, prompts=None, **columns) ->
list[float | None]`, that plugs into `GRPOTrainer(reward_funcs=...)` unchanged. The judging is
the judge stage's (`rlaif.judges.build_judge`), so a reward equals the stage's score for the same
texts. One call judges the whole batch at once (every prompt's group of completions), and can
append every judgment, with provenance, to a Parquet log (`JudgmentLog`, schema
`REWARD_LOG_FEATURES`).

What each kind rewards:
- pointwise: the expected rubric score under the verdict tokens' probabilities;
- pairwise against a column (e.g. `reference`): P(completion beats the reference), both orders averaged;
- pairwise against the group: the soft win rate of a completion over the other completions of its
  group, each pair asked in both orders. The group is the `num_generations` completions of one
  prompt that TRL puts next to each other in the batch; without `num_generations`, a group is a run
  of consecutive rows with the same prompt. (When TRL spreads a group over several processes, each
  process compares the part it holds.)
- likelihood: the judge model's mean log-probability of the completion (with end of sequence);
- reward-model: the sequence-classification model's scalar;
- verifier: the `module:function`'s value (it receives the dataset's columns, e.g. `solution`).
A completion the judge could not score gets None (TRL reads it as NaN and leaves it out).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from rlaif.config import JudgeConfig
from rlaif.errors import ConfigError, InputError
from rlaif.judges import CandidateItem, PairItem, build_judge
from rlaif.judges.ranking import schedule_pairs
from rlaif.records import REWARD_LOG_FEATURES

# Keyword arguments TRL passes to every reward function that are not dataset columns.
TRAINER_KWARGS = {"trainer_state", "log_extra", "log_metric", "completion_ids", "environments"}

PART = re.compile(r"part-(\d+)-\d+\.parquet$")


class JudgmentLog:
    """A directory of Parquet parts, one per reward call, each written atomically (a crash loses none).

    Parts are named `part-<index>-<pid>.parquet`: several processes (one per GPU) can share a
    directory, and a restarted run appends after the parts already there.
    """

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        taken = [int(m.group(1)) for p in self.dir.glob("part-*.parquet") if (m := PART.match(p.name))]
        self._next = 1 + max(taken, default=-1)
        self._lock = threading.Lock()

    def append(self, rows: list[dict]) -> Path | None:
        if not rows:
            return None
        table = pa.Table.from_pylist(rows, schema=REWARD_LOG_FEATURES.arrow_schema)
        with self._lock:
            path = self.dir / f"part-{self._next:06d}-{os.getpid()}.parquet"
            self._next += 1
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path


def read_judgment_log(directory: str | Path) -> datasets.Dataset:
    """Every part of a judgment log, in order, as one Dataset with `REWARD_LOG_FEATURES`."""
    parts = sorted(Path(directory).glob("part-*.parquet"))
    if not parts:
        raise InputError(f"{directory}: no judgment log parts (part-*.parquet)")
    table = pa.concat_tables([pq.read_table(p, schema=REWARD_LOG_FEATURES.arrow_schema) for p in parts])
    return datasets.Dataset(table)


@dataclass
class RewardBatch:
    """What one call judged: a reward and a log record per completion, and how many verdicts it took."""

    rewards: list[float | None]
    records: list[dict]
    judgments: int
    position_consistency: float | None = None


def as_chat(prompt) -> list[dict]:
    """A TRL prompt (a message list, or plain text taken as one user message) as chat messages."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def completion_text(completion) -> str:
    """A TRL completion (the assistant message list, or plain text) as text."""
    if isinstance(completion, str):
        return completion
    return completion[-1]["content"] if completion else ""


def consecutive_groups(prompts: list[list[dict]], num_generations: int | None = None) -> list[int]:
    """The group of each row: chunks of `num_generations` rows (one prompt each), else runs of one prompt."""
    if num_generations:
        if len(prompts) % num_generations:
            raise InputError(f"{len(prompts)} completions do not split into groups of num_generations="
                             f"{num_generations}")
        groups = [k // num_generations for k in range(len(prompts))]
        for k in range(len(prompts)):
            if prompts[k] != prompts[k - k % num_generations]:
                raise InputError(f"completion {k}: its group of {num_generations} holds more than one prompt")
        return groups
    groups, g = [], -1
    for k, p in enumerate(prompts):
        if k == 0 or p != prompts[k - 1]:
            g += 1
        groups.append(g)
    return groups


def check_groups(prompts: list[list[dict]], groups: list[int]) -> None:
    """Explicit groups: one per row, and one prompt per group."""
    if len(groups) != len(prompts):
        raise InputError(f"{len(groups)} group ids for {len(prompts)} completions")
    first: dict[int, int] = {}
    for k, g in enumerate(groups):
        if prompts[first.setdefault(g, k)] != prompts[k]:
            raise InputError(f"completion {k}: group {g} holds more than one prompt")


class JudgeReward:
    """A judge as a TRL reward function; see the module docstring for what each kind rewards.

    `against` (pairwise judges only): "group", or the name of the column holding the reference
    answer. `log`: a `JudgmentLog` (or a directory for one) that receives every judgment.
    """

    def __init__(self, judge, *, against: str | None = None, num_generations: int | None = None,
                 log: JudgmentLog | str | Path | None = None, name: str | None = None):
        if judge.kind == "pairwise" and not against:
            raise ConfigError("a pairwise reward needs against='group' or the name of a reference column")
        if judge.kind != "pairwise" and against:
            raise ConfigError(f"'against' is for pairwise judges; a {judge.kind} judge scores each completion alone")
        self.judge, self.against, self.num_generations = judge, against, num_generations
        self.log = JudgmentLog(log) if isinstance(log, (str, Path)) else log
        suffix = f"_vs_{against}" if against else ""
        self.__name__ = name or f"rlaif_{judge.kind.replace('-', '_')}{suffix}"
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, completions, prompts=None, **columns) -> list[float | None]:
        state, log_metric = columns.get("trainer_state"), columns.get("log_metric")
        data = {k: v for k, v in columns.items()
                if k not in TRAINER_KWARGS and isinstance(v, (list, tuple)) and len(v) == len(completions)}
        batch = self.judge_batch(prompts, completions, data, step=getattr(state, "global_step", None))
        if log_metric is not None and batch.rewards:
            log_metric(f"{self.__name__}/judge_failures", sum(r is None for r in batch.rewards) / len(batch.rewards))
            if batch.position_consistency is not None:
                log_metric(f"{self.__name__}/position_consistency", batch.position_consistency)
        return batch.rewards

    def judge_batch(self, prompts, completions, columns: dict | None = None, groups: list[int] | None = None,
                    step: int | None = None) -> RewardBatch:
        """Judge one batch; `groups` (pairwise vs group) overrides the grouping of consecutive prompts."""
        columns = columns or {}
        if prompts is None:
            if self.judge.kind != "verifier":
                raise InputError(f"a {self.judge.kind} reward needs the prompts (prompts=...)")
            prompts = [[] for _ in completions]
        if len(prompts) != len(completions):
            raise InputError(f"{len(prompts)} prompts for {len(completions)} completions")
        chats = [as_chat(p) for p in prompts]
        texts = [completion_text(c) for c in completions]
        if groups is None:
            groups = consecutive_groups(chats, self.num_generations)
        else:
            check_groups(chats, groups)
        with self._lock:  # one call at a time: the judge's engine is not thread-safe
            call = self.calls
            self.calls += 1
            if self.judge.kind == "pairwise":
                batch = self._pairwise(chats, texts, columns, groups)
            else:
                batch = self._scores(chats, texts, columns)
        common = {"time": time.time(), "call": call, "step": step, "reward_name": self.__name__,
                  **self.judge.provenance.columns()}
        for k, record in enumerate(batch.records):
            record.update(common, row=k, group=groups[k], prompt=chats[k], completion=texts[k], reward=batch.rewards[k],
                          columns=json.dumps({c: v[k] for c, v in columns.items()}, default=str))
        if self.log is not None:
            self.log.append(batch.records)
        return batch

    def _scores(self, chats, texts, columns) -> RewardBatch:
        rows = [{c: v[k] for c, v in columns.items()} for k in range(len(texts))]
        scores = self.judge.score([CandidateItem(p, t, r) for p, t, r in zip(chats, texts, rows)]) if texts else []
        records = [{"score_distribution": s.distribution, "raw_text": s.raw_text, "judge_failure": s.failure,
                    "comparisons": None} for s in scores]
        return RewardBatch([s.score for s in scores], records, len(scores))

    def _pairwise(self, chats, texts, columns, groups) -> RewardBatch:
        n = len(texts)
        if self.against == "group":
            members: dict[int, list[int]] = {}
            for k, g in enumerate(groups):
                members.setdefault(g, []).append(k)
            pairs = [PairItem(str(g), chats[ks[0]], a, b, texts[a], texts[b])
                     for g, ks in members.items() for a, b in schedule_pairs(ks, "all-pairs")]
        else:
            if self.against not in columns:
                raise InputError(f"column {self.against!r} (the reference answers) is missing; columns: "
                                 f"{sorted(columns) or 'none'}")
            refs = [completion_text(r) for r in columns[self.against]]
            pairs = [PairItem(str(k), chats[k], k, -1, texts[k], refs[k]) for k in range(n)]
        judgments = self.judge.compare(pairs) if pairs else []
        seen: list[list[dict]] = [[] for _ in range(n)]
        for pair, j in zip(pairs, judgments):
            seen[pair.a].append(_entry(j, pair.b, pair.text_b, flip=False))
            if pair.b >= 0:
                seen[pair.b].append(_entry(j, pair.a, pair.text_a, flip=True))
        rewards, records = [], []
        for k in range(n):
            prefs = [c["preference"] for c in seen[k] if c["preference"] is not None]
            failure = None
            if not seen[k]:
                failure = "a group of one: nothing to compare with"
            elif not prefs:
                failure = "every comparison failed: " + "; ".join(c["judge_failure"] or "?" for c in seen[k])
            rewards.append(sum(prefs) / len(prefs) if prefs else None)
            records.append({"score_distribution": None, "raw_text": None, "judge_failure": failure,
                            "comparisons": seen[k]})
        judged = [j for j in judgments if j.consistent is not None]
        consistency = sum(j.consistent for j in judged) / len(judged) if judged else None
        return RewardBatch(rewards, records, 2 * len(judgments), consistency)


def _entry(j, opponent: int, opponent_text: str, flip: bool) -> dict:
    """One comparison as seen from one side: A is always the row's own completion."""
    if not flip:
        return {"opponent": opponent, "opponent_text": opponent_text, "p_a_first": j.p_a_first,
                "p_b_first": j.p_b_first, "preference": j.preference, "consistent": j.consistent,
                "raw_text_ab": j.raw_text_ab, "raw_text_ba": j.raw_text_ba, "judge_failure": j.judge_failure}
    return {"opponent": opponent, "opponent_text": opponent_text, "p_a_first": j.p_b_first,
            "p_b_first": j.p_a_first, "preference": None if j.preference is None else 1.0 - j.preference,
            "consistent": j.consistent, "raw_text_ab": j.raw_text_ba, "raw_text_ba": j.raw_text_ab,
            "judge_failure": j.judge_failure}


# ---------------------------------------------------------------- factories


def judge_config(kind: str, config: JudgeConfig | dict | None = None, **fields) -> JudgeConfig:
    """`config` (a JudgeConfig or its fields) with `fields` on top, for a `kind` judge.

    A config that names another kind explicitly is an error; one that leaves `kind` at its default
    gets `kind`.
    """
    if isinstance(config, JudgeConfig):
        base = config.model_dump(exclude_unset=True)
    else:
        base = dict(config or {})
    if base.get("kind", kind) != kind:
        raise ConfigError(f"field 'judge.kind': this is a {kind} reward, the config names {base['kind']!r}")
    try:
        return JudgeConfig.model_validate({**base, **fields, "kind": kind})
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(f"field 'judge.{'.'.join(map(str, first['loc']))}': {first['msg']}") from None


def judge_reward(config: JudgeConfig | None = None, *, judge=None, against: str | None = None,
                 num_generations: int | None = None,
                 log: JudgmentLog | str | Path | None = None, name: str | None = None, seed: int = 0) -> JudgeReward:
    """The reward for whichever judge `config.kind` names (what `rlaif serve` and `train.grpo.reward: judge` use).

    `judge`: an already built judge object (e.g. `build_judge(config, engine)` to share a loaded model).
    """
    if judge is None:
        if config is None:
            raise ConfigError("judge_reward needs a JudgeConfig or a judge")
        judge = build_judge(config, seed=seed)
    elif config is not None and config.kind != judge.kind:
        raise ConfigError(f"field 'judge.kind': the config names {config.kind!r}, the judge given is {judge.kind!r}")
    if judge.kind == "pairwise" and against is None:
        against = "group"
    return JudgeReward(judge, against=against, num_generations=num_generations, log=log, name=name)


def pointwise_reward(config: JudgeConfig | dict | None = None, *, log=None, name=None, seed: int = 0,
                     judge=None, **fields) -> JudgeReward:
    """The expected rubric score (e.g. 1-5) from the verdict tokens' probabilities."""
    return judge_reward(judge_config("pointwise", config, **fields), judge=judge, log=log, name=name, seed=seed)


def pairwise_reward(config: JudgeConfig | dict | None = None, *, against: str = "group",
                    num_generations: int | None = None, log=None, name=None, seed: int = 0, judge=None,
                    **fields) -> JudgeReward:
    """The soft win rate against the group's other completions, or against a reference column; both orders."""
    return judge_reward(judge_config("pairwise", config, **fields), judge=judge, against=against,
                        num_generations=num_generations, log=log, name=name, seed=seed)


def likelihood_reward(config: JudgeConfig | dict | None = None, *, log=None, name=None, judge=None,
                      **fields) -> JudgeReward:
    """The judge model's mean log-probability of the completion, end of sequence included."""
    return judge_reward(judge_config("likelihood", config, **fields), judge=judge, log=log, name=name)


def reward_model_reward(config: JudgeConfig | dict | None = None, *, log=None, name=None, judge=None,
                        **fields) -> JudgeReward:
    """A sequence-classification reward model's scalar for prompt + completion."""
    return judge_reward(judge_config("reward-model", config, **fields), judge=judge, log=log, name=name)


def verifier_reward(config: JudgeConfig | dict | None = None, *, log=None, name=None, judge=None,
                    **fields) -> JudgeReward:
    """A `module:function` verifier's value (`verifier=` names it); its exceptions become None, not a crash."""
    return judge_reward(judge_config("verifier", config, **fields), judge=judge, log=log, name=name)
