"""The pointwise judge: a rubric score per candidate.

With log-probs the score is the expected value over the score tokens' renormalised probabilities
(the distribution is kept); in text mode the score is parsed strictly, re-asked a bounded number of
times. With `aspects` (UltraFeedback style) each aspect is rated separately; the score is the mean
and the distribution the mixture of the aspects' distributions.
"""

from __future__ import annotations

from rlaif.engines import Engine
from rlaif.errors import ConfigError
from rlaif.judges.base import CandidateItem, Provenance, Score, question_of
from rlaif.judges.parsing import ask_for_verdicts, normalise
from rlaif.judges.prompting import judge_template, render, require_single_tokens, verdict_tokens


class PointwiseJudge:
    kind = "pointwise"

    def __init__(self, engine: Engine, template: str = "additive", *, mode: str = "logprobs",
                 verdicts: list[str] | None = None, aspects: list[str] | None = None, delimiters: str = "nonce",
                 max_new_tokens: int = 8, parse_retries: int = 2, seed: int = 0):
        if mode == "cot":
            raise ConfigError("field 'judge.mode': cot is for pairwise judges; a pointwise judge uses logprobs or text")
        self.engine = engine
        self.template = judge_template(template)
        self.verdicts = verdict_tokens(self.template, verdicts, ["1", "2", "3", "4", "5"])
        try:
            self.values = [float(v) for v in self.verdicts]
        except ValueError:
            raise ConfigError(f"field 'judge.verdict_tokens': rubric scores must be numbers, got {self.verdicts}") from None
        if mode == "logprobs":
            require_single_tokens(self.template, self.verdicts, engine)
        self.aspects = list(aspects or [None])
        self.mode, self.delimiters = mode, delimiters
        self.max_new_tokens, self.parse_retries, self.seed = max_new_tokens, parse_retries, seed
        self.provenance = Provenance("pointwise", engine.model_id, engine.name, self.template.name,
                                     self.template.sha256)

    def prompt(self, item: CandidateItem, aspect: str | None) -> list[dict]:
        extra = {"aspect": aspect} if aspect else {}
        text = render(self.template, question=question_of(item.prompt), mode=self.delimiters, response=item.text, **extra)
        return [{"role": "user", "content": text}]

    def score(self, items: list[CandidateItem]) -> list[Score]:
        chats = [self.prompt(it, a) for it in items for a in self.aspects]
        per = self._soft(chats) if self.mode == "logprobs" else self._text(chats)
        k = len(self.aspects)
        return [self._merge(per[i * k:(i + 1) * k]) for i in range(len(items))]

    def _merge(self, parts: list[Score]) -> Score:
        if len(parts) == 1:
            return parts[0]
        failed = [p for p in parts if p.score is None]
        raw = "\n".join(f"{a}: {p.raw_text}" for a, p in zip(self.aspects, parts)) if parts[0].raw_text is not None else None
        if failed:
            return Score(None, None, raw, "; ".join(f"{a}: {p.failure}" for a, p in zip(self.aspects, parts) if p.failure))
        dist = None
        if all(p.distribution for p in parts):
            dist = [sum(p.distribution[j] for p in parts) / len(parts) for j in range(len(self.values))]
        return Score(sum(p.score for p in parts) / len(parts), dist, raw)

    def _soft(self, chats: list) -> list[Score]:
        out = []
        for lp in self.engine.next_token_logprobs(chats, tokens=self.verdicts):
            dist = normalise(lp, self.verdicts)
            if dist is None:
                out.append(Score(None, failure="no probability mass on the score tokens"))
            else:
                out.append(Score(sum(p * v for p, v in zip(dist, self.values)), dist))
        return out

    def _text(self, chats: list) -> list[Score]:
        asked = ask_for_verdicts(self.engine, chats, self.verdicts, retries=self.parse_retries,
                                 max_new_tokens=self.max_new_tokens, seed=self.seed)
        return [Score(None if v is None else float(v), raw_text=raw, failure=failure) for v, raw, failure in asked]
