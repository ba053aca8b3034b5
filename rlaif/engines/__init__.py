"""Text engines behind one protocol; `load_engine` builds the one a config block names."""

from __future__ import annotations

from rlaif import sources
from rlaif.engines.base import Completion, Engine, GenerationRequest, GenerationResult
from rlaif.engines.openai import OpenAIEngine
from rlaif.engines.vllm import VLLMEngine
from rlaif.errors import ConfigError

__all__ = ["Completion", "Engine", "GenerationRequest", "GenerationResult", "load_engine", "resolve_model"]


def resolve_model(name: str | None, field: str = "model") -> str:
    """A model name or path; registered source names (`toy:judge`, `smollm2:135m-instruct`) become local paths."""
    return sources.resolve(name, field)


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
