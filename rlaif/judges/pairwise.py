"""The pairwise judge: "which response is better", asked in both orders.

`logprobs` mode (default): one forward pass per order, the verdict is the probability mass on the
verdict tokens after the judge prompt, renormalised over them: a soft label, no decoding (the
RLAIF paper, Lee et al. 2023). `text` mode generates a verdict and parses it strictly, re-asking a
bounded number of times. `cot` mode generates a rationale first, then reads the verdict-token
probabilities after "Verdict: ".
"""

from __future__ import annotations

import logging

from rlaif.engines import Engine, GenerationRequest
from rlaif.judges.base import PairItem, Provenance, combine, question_of
from rlaif.judges.parsing import ask_for_verdicts, normalise
from rlaif.judges.prompting import judge_template, render, require_single_tokens, verdict_tokens
from rlaif.records import Judgment, SamplingParams

log = logging.getLogger(__name__)


class PairwiseJudge:
    kind = "pairwise"

    def __init__(self, engine: Engine, template: str = "pairwise", *, mode: str = "logprobs",
                 verdicts: list[str] | None = None, tie_band: float = 0.05, delimiters: str = "nonce",
                 max_new_tokens: int = 8, cot_max_new_tokens: int = 256, parse_retries: int = 2, seed: int = 0):
        self.engine = engine
        self.template = judge_template(template)
        self.verdicts = verdict_tokens(self.template, verdicts, ["1", "2"])[:2]
        if mode != "text":
            require_single_tokens(self.template, self.verdicts, engine)
        self.mode, self.tie_band, self.delimiters = mode, tie_band, delimiters
        self.max_new_tokens, self.cot_max_new_tokens = max_new_tokens, cot_max_new_tokens
        self.parse_retries, self.seed = parse_retries, seed
        self.provenance = Provenance("pairwise", engine.model_id, engine.name, self.template.name,
                                     self.template.sha256)

    def prompt(self, question: str, first: str, second: str, cot: bool = False) -> list[dict]:
        text = render(self.template, question=question, mode=self.delimiters, cot=cot,
                      response_a=first, response_b=second)
        return [{"role": "user", "content": text}]

    def compare(self, pairs: list[PairItem]) -> list[Judgment]:
        """Both orders of every pair, batched across pairs (and so across prompts)."""
        chats = []
        for p in pairs:
            q = question_of(p.prompt)
            chats += [self.prompt(q, p.text_a, p.text_b, self.mode == "cot"),
                      self.prompt(q, p.text_b, p.text_a, self.mode == "cot")]
        if self.mode == "logprobs":
            firsts, raws, failures = self._soft(chats), [None] * len(chats), [None] * len(chats)
        elif self.mode == "cot":
            firsts, raws, failures = self._cot(chats)
        else:
            firsts, raws, failures = self._text(chats)
        out = []
        for k, p in enumerate(pairs):
            ab, ba = firsts[2 * k], firsts[2 * k + 1]
            why = [f"order {o}: {f}" for o, f in (("AB", failures[2 * k]), ("BA", failures[2 * k + 1])) if f]
            out.append(Judgment(prompt_id=p.prompt_id, candidate_a=p.a, candidate_b=p.b, p_a_first=ab, p_b_first=ba,
                                **combine(ab, ba, self.tie_band), raw_text_ab=raws[2 * k], raw_text_ba=raws[2 * k + 1],
                                judge_failure="; ".join(why) or None, **self.provenance.columns()))
        return out

    # ---------------------------------------------------------------- verdict readers

    def _soft(self, prompts: list) -> list[float | None]:
        logprobs = self.engine.next_token_logprobs(prompts, tokens=self.verdicts)
        return [None if (p := normalise(lp, self.verdicts)) is None else p[0] for lp in logprobs]

    def _text(self, chats: list) -> tuple[list, list, list]:
        """Generate, parse strictly; re-ask the failures (sampled) up to `parse_retries` times."""
        asked = ask_for_verdicts(self.engine, chats, self.verdicts, retries=self.parse_retries,
                                 max_new_tokens=self.max_new_tokens, seed=self.seed)
        firsts = [None if v is None else (1.0 if v == self.verdicts[0] else 0.0) for v, _, _ in asked]
        return firsts, [raw for _, raw, _ in asked], [failure for _, _, failure in asked]

    def _cot(self, chats: list) -> tuple[list, list, list]:
        """Rationale by greedy decoding (stopped at "Verdict:"), then the verdict tokens' probabilities after it."""
        texts = [self.engine.prompt_text(c) for c in chats]  # first: an engine that cannot continue fails at once
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=self.cot_max_new_tokens, stop=["Verdict:"])
        results = self.engine.generate([GenerationRequest(c, params, self.seed) for c in chats])
        raws = [r.completions[0].text if r.completions else None for r in results]
        firsts = self._soft([text + (rationale or "").rstrip() + "\nVerdict: " for text, rationale in zip(texts, raws)])
        failures = [r.failure for r in results]
        return firsts, raws, failures
