"""A local Hugging Face causal LM (CPU or GPU) behind the engine protocol.

Throughput choices: requests are sorted by prompt length and batched (left padding), so padding
waste stays small; each prompt is tokenised once and expanded to its n samples inside
`generate` (`num_return_sequences`); greedy requests decode once and are copied n times; the
sum log-prob of each completion is recorded during decoding (raw model distribution, before
temperature/top-p) by a logits processor, so no second forward pass is needed.
"""

from __future__ import annotations

import inspect
import logging
import math
from itertools import groupby

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from rlaif.engines.base import (Completion, GenerationRequest, GenerationResult, LocalTokenizer, PromptInput,
                                encode_prompts)
from rlaif.engines.devices import pick_device, pick_dtype
from rlaif.errors import EngineError

log = logging.getLogger(__name__)


class _LogprobRecorder(LogitsProcessor):
    """Accumulates log p(chosen token) under the raw model distribution, step by step.

    HF runs custom processors before the temperature/top-p warpers, so `scores` here are the
    model's own logits. At step t the token chosen at t-1 is the last column of `input_ids`.
    """

    def __init__(self):
        self.previous: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, sequences[:, -1:]).squeeze(1))
        return torch.stack(self.steps, dim=1) if self.steps else torch.zeros(sequences.shape[0], 0)


class TransformersEngine(LocalTokenizer):
    name = "transformers"

    def __init__(self, model: str, *, dtype: str = "auto", device: str = "auto", batch_size: int = 64,
                 display_name: str | None = None):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.model_id = display_name or model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=pick_dtype(dtype, self.device))
        except (OSError, ValueError) as e:
            raise EngineError(f"cannot load model {model!r} with transformers: {str(e).splitlines()[0]}") from None
        self.model.to(self.device).eval()
        tok = self.tokenizer
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.context = getattr(self.model.config, "max_position_embeddings", None) or 1 << 30
        # the next-token primitive needs the last position's logits only: on a real vocabulary the LM head over
        # every position is a fifth of the forward pass and the bulk of its memory
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(
            self.model.forward).parameters else {}
        eos = self.model.generation_config.eos_token_id or tok.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])

    # ------------------------------------------------------------ encoding

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        return ids, mask

    # ------------------------------------------------------------ generate

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        encoded = []
        for i, req in enumerate(requests):
            ids = self.encode(req.prompt)
            if len(ids) >= self.context:
                results[i] = GenerationResult(failure=f"prompt has {len(ids)} tokens; the model's context is "
                                                      f"{self.context}", prompt_tokens=len(ids))
            else:
                encoded.append((i, ids))

        def key(item):
            p = requests[item[0]].params
            return (p.temperature, p.top_p, p.max_new_tokens, tuple(p.stop), p.n)

        # Group by sampling params, then sort by length inside a group: batches of similar lengths.
        encoded.sort(key=lambda it: (key(it), len(it[1])))
        batch_no = 0
        for _, group in groupby(encoded, key=key):
            group = list(group)
            n = requests[group[0][0]].params.n
            per_batch = max(1, self.batch_size // (1 if requests[group[0][0]].params.temperature == 0 else n))
            for start in range(0, len(group), per_batch):
                chunk = group[start : start + per_batch]
                seed = requests[chunk[0][0]].seed * 1_000_003 + batch_no
                batch_no += 1
                try:
                    outs = self._generate_batch([ids for _, ids in chunk], requests[chunk[0][0]].params, seed)
                except (RuntimeError, ValueError) as e:  # e.g. out of memory: record, keep going
                    log.warning("generation batch failed: %s", e)
                    outs = [GenerationResult(failure=f"engine error: {str(e).splitlines()[0][:300]}")] * len(chunk)
                for (i, ids), out in zip(chunk, outs):
                    out.prompt_tokens = len(ids)
                    results[i] = out
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_batch(self, rows: list[list[int]], params, seed: int) -> list[GenerationResult]:
        tok = self.tokenizer
        ids, mask = self._left_pad(rows)
        greedy = params.temperature == 0
        max_new = min(params.max_new_tokens, self.context - ids.shape[1])
        recorder = _LogprobRecorder()
        torch.manual_seed(seed)
        kwargs = dict(
            max_new_tokens=max_new,
            do_sample=not greedy,
            num_return_sequences=1 if greedy else params.n,
            logits_processor=LogitsProcessorList([recorder]),
            pad_token_id=tok.pad_token_id,
            top_k=None,
            temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p,
        )
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=tok)
        seqs = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        new = seqs[:, ids.shape[1] :]
        step_logprobs = recorder.finish(seqs)
        copies = params.n if greedy else 1
        per_prompt = 1 if greedy else params.n
        results = []
        for r in range(len(rows)):
            completions = []
            for s in range(per_prompt):
                row = r * per_prompt + s
                completion = self._completion(new[row].tolist(), step_logprobs[row], params.stop, max_new)
                completions.extend([completion] * copies)
            results.append(GenerationResult(completions=completions))
        return results

    def _completion(self, tokens: list[int], logprobs: torch.Tensor, stop: list[str], max_new: int) -> Completion:
        end = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
        if end is not None:
            kept, num = tokens[:end], end + 1  # the eos token counts, as in vLLM and OpenAI usage
        else:  # a row that stopped on a stop string is padded after it
            kept = tokens
            while kept and kept[-1] == self.tokenizer.pad_token_id:
                kept = kept[:-1]
            num = len(kept)
        finish = "length" if end is None and num >= max_new else "stop"
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        if cut >= 0:  # the stop string is cut from the text, as OpenAI-compatible servers do
            text, finish = text[:cut], "stop"
        logprob = float(logprobs[:num].sum()) if num else 0.0
        return Completion(text=text, num_tokens=num, finish_reason=finish,
                          logprob_sum=logprob if math.isfinite(logprob) else None)

    # ------------------------------------------------------------ score / next token

    @torch.inference_mode()
    def score(self, prompts: list[PromptInput], continuations: list[str]) -> list[list[float]]:
        """Per-token log-probs of each continuation after its prompt (teacher-forced, right-padded batches)."""
        if len(prompts) != len(continuations):
            raise ValueError("score: prompts and continuations differ in length")
        items = []
        for i, (p, c) in enumerate(zip(prompts, continuations)):
            p_ids = self.encode(p)
            c_ids = self.tokenizer(c, add_special_tokens=False)["input_ids"]
            items.append((i, p_ids, c_ids))
        items.sort(key=lambda it: len(it[1]) + len(it[2]))
        out: list[list[float]] = [[] for _ in prompts]
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            seqs = [p + c for _, p, c in chunk]
            width = max(len(s) for s in seqs)
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits
            for row, (i, p, c) in enumerate(chunk):
                if not c:
                    continue
                span = logits[row, len(p) - 1 : len(p) + len(c) - 1].float()
                lp = torch.log_softmax(span, dim=-1).gather(1, torch.tensor(c, device=self.device)[:, None])
                out[i] = lp.squeeze(1).tolist()
        return out

    @torch.inference_mode()
    def next_token_logprobs(self, prompts: list[PromptInput], tokens: list[str] | None = None,
                            top_k: int | None = None) -> list[dict[str, float]]:
        """Log-probs of the next token after each prompt: the requested tokens and/or the top k."""
        if not tokens and not top_k:
            raise ValueError("next_token_logprobs: give tokens or top_k")
        wanted = [(t, self.token_id(t)) for t in tokens or []]
        # tokenised in one batched call, then sorted by length so a batch pads as little as it can
        encoded = sorted(enumerate(encode_prompts(self.tokenizer, prompts)), key=lambda it: len(it[1]))
        out: list[dict[str, float]] = [{} for _ in prompts]
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start : start + self.batch_size]
            ids, mask = self._left_pad([e for _, e in chunk])
            last = self.model(input_ids=ids, attention_mask=mask, **self._last_only).logits[:, -1].float()
            logprobs = torch.log_softmax(last, dim=-1)
            for row, (i, _) in enumerate(chunk):
                d = {}
                if top_k:
                    vals, idx = logprobs[row].topk(top_k)
                    for v, t in zip(vals.tolist(), idx.tolist()):
                        d[self.tokenizer.decode([t])] = v
                for t, tid in wanted:
                    d[t] = logprobs[row, tid].item()
                out[i] = d
        return out

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
