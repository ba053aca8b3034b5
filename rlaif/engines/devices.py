"""Where and in which precision a local model runs (the transformers engine and the reward-model judge)."""

from __future__ import annotations

import torch


def pick_device(device: str) -> str:
    """`auto` -> cuda when torch sees a GPU, else cpu; anything else as given."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` -> bfloat16 on GPUs that support it, else float32; anything else by name."""
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)
