"""The reward-model judge: a sequence-classification model's scalar for prompt + response, batched.

The conversation (prompt + the candidate as the assistant turn) goes through the model's chat
template, exactly as TRL's `RewardTrainer` formats it, so a model trained by `rlaif train rm`
scores what it was trained on.
"""

from __future__ import annotations

import torch

from rlaif.engines.devices import pick_device, pick_dtype
from rlaif.errors import EngineError
from rlaif.judges.base import CandidateItem, Provenance, Score


class RewardModelJudge:
    kind = "reward-model"

    def __init__(self, model: str, *, display_name: str | None = None, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 64):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = pick_device(device)
        self.batch_size = batch_size
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForSequenceClassification.from_pretrained(model, dtype=pick_dtype(dtype, self.device))
        except (OSError, ValueError) as e:
            raise EngineError(f"cannot load reward model {model!r}: {str(e).splitlines()[0]}") from None
        if self.model.config.num_labels != 1:
            raise EngineError(f"reward model {model!r} has {self.model.config.num_labels} labels; expected 1 (a scalar)")
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.provenance = Provenance("reward-model", display_name or model, "transformers")

    def encode(self, item: CandidateItem) -> list[int]:
        chat = [*item.prompt, {"role": "assistant", "content": item.text}]
        text = self.tokenizer.apply_chat_template(chat, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def score(self, items: list[CandidateItem]) -> list[Score]:
        encoded = sorted(((i, self.encode(it)) for i, it in enumerate(items)), key=lambda e: len(e[1]))
        out: list[Score] = [Score(None)] * len(items)
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start:start + self.batch_size]
            width = max(len(ids) for _, ids in chunk)
            # right padding: the classifier pools the last non-pad token
            ids = torch.tensor([e + [pad] * (width - len(e)) for _, e in chunk], device=self.device)
            mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for _, e in chunk], device=self.device)
            rewards = self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()
            for (i, _), r in zip(chunk, rewards):
                out[i] = Score(r)
        return out
