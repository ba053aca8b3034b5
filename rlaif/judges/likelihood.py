"""The likelihood judge: a reference model's log-probability of each candidate given its prompt.

No template and no slot, so nothing to be position-biased by; one teacher-forced forward pass per
candidate. The end-of-sequence token is scored too, so an answer that is right but goes on is not
rewarded. The preference between two candidates is the logistic of the score difference.
"""

from __future__ import annotations

import math

from rlaif.engines import Engine
from rlaif.judges.base import CandidateItem, Provenance, Score


class LikelihoodJudge:
    kind = "likelihood"

    def __init__(self, engine: Engine, *, length_normalize: bool = True):
        self.engine = engine
        self.length_normalize = length_normalize
        self.eos = engine.eos_text
        self.provenance = Provenance("likelihood", engine.model_id, engine.name)

    def score(self, items: list[CandidateItem]) -> list[Score]:
        logprobs = self.engine.score([it.prompt for it in items], [it.text + self.eos for it in items])
        out = []
        for lp in logprobs:
            if not lp:
                out.append(Score(None, failure="no tokens to score"))
                continue
            total = sum(lp)
            out.append(Score(total / len(lp) if self.length_normalize else total))
        return out

    @staticmethod
    def preference(score_a: float, score_b: float) -> float:
        """P(A > B) = logistic(score_a - score_b)."""
        return 1.0 / (1.0 + math.exp(score_b - score_a))
