"""Text engines behind one protocol; `load_engine` builds the one a config block names."""

from __future__ import annotations

import os
from pathlib import Path

from rlaif import sources
from rlaif.engines.base import Completion, Engine, GenerationRequest, GenerationResult
from rlaif.engines.openai import OpenAIEngine
from rlaif.engines.vllm import VLLMEngine
from rlaif.errors import ConfigError

__all__ = ["Completion", "Engine", "GenerationRequest", "GenerationResult", "load_engine", "resolve_model"]


def resolve_model(name: str | None, field: str = "model") -> str:
    """A model name or path; registered source names (`toy:judge`, `smollm2:135m-instruct`) become local paths.

    A name written as a path (absolute, `./`, `../`, `~`) must be a model directory: otherwise the
    hub client would answer with a confusing "Repo id must be..." message.
    """
    resolved = sources.resolve(name, field)
    if resolved == name and (os.path.isabs(name) or name.startswith(("./", "../", "~"))):
        path = Path(name).expanduser()
        if not path.exists():
            raise ConfigError(f"field '{field}': {name}: no such model directory; expected a directory holding "
                              "config.json and the weights, a hub name (org/name), or a source such as toy:policy")
        if path.is_dir() and not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ConfigError(f"field '{field}': {name}: not a model directory (no config.json or adapter_config.json)")
    return resolved


def load_engine(block, field: str = "generate") -> Engine:
    """Build the engine an `EngineBlock` (from the pipeline file) names."""
    model = resolve_model(block.model, f"{field}.model")
    if block.engine == "transformers":
        from rlaif.engines.transformers import TransformersEngine

        return TransformersEngine(model, dtype=block.dtype, device=block.device, batch_size=block.batch_size,
                                  display_name=block.model)
    if block.engine == "vllm":
        return VLLMEngine(model, dtype=block.dtype, max_model_len=block.max_model_len,
                          tensor_parallel_size=block.tensor_parallel_size,
                          gpu_memory_utilization=block.gpu_memory_utilization, enforce_eager=block.enforce_eager,
                          engine_kwargs=block.engine_kwargs, display_name=block.model)
    if block.engine == "openai":
        return OpenAIEngine.from_block(block, model, field)
    raise ConfigError(f"field '{field}.engine': engine {block.engine!r} is not available in this build; "
                      "allowed: transformers, vllm, openai")
