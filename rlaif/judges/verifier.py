"""The verifier judge: a Python function for tasks with checkable answers.

The function has TRL's reward signature, `f(completions, **columns) -> list[float | None]`:
completions are conversational (`[[{"role": "assistant", "content": ...}], ...]`), `prompts` and the
dataset's other columns (`solution`, ...) are passed by name. So TRL's own reward functions work
here unchanged, and the same function serves as a GRPO reward. None means "not applicable".
"""

from __future__ import annotations

import logging

from rlaif.functions import load_function
from rlaif.judges.base import CandidateItem, Provenance, Score

log = logging.getLogger(__name__)


class VerifierJudge:
    kind = "verifier"

    def __init__(self, function: str):
        self.function = load_function(function, "judge.verifier")
        self.provenance = Provenance("verifier", function, "python")

    def _call(self, items: list[CandidateItem]) -> list:
        columns = {k: [it.columns.get(k) for it in items] for k in items[0].columns}
        values = self.function(completions=[[{"role": "assistant", "content": it.text}] for it in items],
                               prompts=[it.prompt for it in items], **columns)
        if len(values) != len(items):
            raise ValueError(f"returned {len(values)} values for {len(items)} completions")
        return list(values)

    def score(self, items: list[CandidateItem]) -> list[Score]:
        if not items:
            return []
        try:
            values = self._call(items)
        except Exception as e:  # noqa: BLE001 - user code: isolate the failing rows instead of losing the batch
            log.warning("verifier failed on a batch of %d (%s); retrying row by row", len(items), e)
            values = []
            for it in items:
                try:
                    values.extend(self._call([it]))
                except Exception as row_error:  # noqa: BLE001
                    values.append(row_error)
        out = []
        for v in values:
            if isinstance(v, Exception):
                out.append(Score(None, failure=f"verifier raised {type(v).__name__}: {v}"))
            elif v is None:
                out.append(Score(None, failure="not applicable: the verifier returned None"))
            else:
                out.append(Score(float(v)))
        return out
