"""Pydantic models of a pipeline file: the one place where settings are defined.

A pipeline file has a top-level `seed` and one section per stage. A stage command reads its own
section; flags and `--set key.path=value` override the file. Unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rlaif.errors import ConfigError


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EngineBlock(StrictModel):
    """Which engine runs which model, and the engine's options.

    Parameters that choose the engine:
        engine: `transformers` (local HF model, CPU or GPU), `vllm` (offline vLLM), `openai` (any
            OpenAI-compatible server).
        model: a model name or path; `toy:policy` / `toy:judge` name the offline toy models.
    Parameters of local engines:
        dtype: `auto` (float32 on CPU, bfloat16 on GPUs that support it), `float32`, `bfloat16`, `float16`.
        device: `auto`, `cpu`, `cuda`, `cuda:1`, ...
        batch_size: sequences per forward pass (prompts x n for generation).
    Parameters of vLLM:
        max_model_len, tensor_parallel_size, gpu_memory_utilization (on CPU: the share of the NUMA
        node's memory for the KV cache), enforce_eager, engine_kwargs (passed to `vllm.LLM` as is).
    Parameters of OpenAI-compatible servers:
        base_url, api_key_env (the name of the environment variable that holds the key; the key
        itself never goes into a file), max_concurrency, timeout_s, max_retries.
    """

    engine: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    batch_size: int = Field(64, ge=1)
    max_model_len: int | None = Field(None, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    enforce_eager: bool = False
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)


class GenerateConfig(EngineBlock):
    """The generate stage: prompts in, `n` candidates per prompt out.

    Parameters of the input:
        input: a JSONL, Parquet or CSV file, a saved `datasets` directory, or `toy:train` / `toy:test`.
        prompt_column: the column holding the prompt (a string or a chat message list); default
            `messages` if present, else `prompt`.
        system_prompt: prepended as a system message.
        template: a Jinja2 generator template (a name from `prompts/generate/` or a path) that wraps
            the user message; it sees `prompt` and every input column.
    Parameters of sampling:
        n, temperature (0 = greedy), top_p, max_new_tokens, stop (strings that end a completion;
        they are cut from the text).
    Parameters of the run:
        shard_size: prompts per Parquet shard; the unit of resume and of seeding (seed + shard index).
    """

    input: str | None = None
    prompt_column: str | None = None
    system_prompt: str | None = None
    template: str | None = None
    n: int = Field(4, ge=1, le=1024)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1)
    stop: list[str] = Field(default_factory=list)
    shard_size: int = Field(256, ge=1)

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: list[str]) -> list[str]:
        if any(s == "" for s in value):
            raise ValueError("stop strings must be non-empty")
        return value


class PipelineConfig(StrictModel):
    """A whole pipeline file. Later stages add their sections here."""

    name: str | None = None
    seed: int = 0
    generate: GenerateConfig = Field(default_factory=GenerateConfig)


def _set_path(tree: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"{source}: '{dotted}' is not a key path (expected e.g. generate.n=8)")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: '{dotted}': '{key}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_set(item: str) -> tuple[str, Any]:
    """`key.path=value` -> (key.path, YAML-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value (e.g. --set generate.n=8)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{path}'")
            continue
        msg = e["msg"]
        if e["type"] == "literal_error":
            msg = f"got {e['input']!r}; {msg[0].lower() + msg[1:]}"
        else:
            msg = f"{msg} (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else msg
        lines.append(f"{source}: field '{path}': {msg}")
    return "\n".join(lines)


def load_yaml(path: str | Path) -> dict:
    """Read a pipeline file as a mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: pipeline file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (seed, generate, ...), got {type(data).__name__}")
    return data


def load_config(
    path: str | Path | None = None,
    sets: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> PipelineConfig:
    """Build the config from a file, then `--set` overrides, then explicit flags (which win).

    `flags` maps key paths (`generate.n`) to values; None values are ignored (flag not given).
    """
    tree = load_yaml(path) if path else {}
    source = str(path) if path else "config"
    for item in sets or []:
        key, value = parse_set(item)
        _set_path(tree, key, value, "--set")
    for key, value in (flags or {}).items():
        if value is not None:
            _set_path(tree, key, value, "flag")
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as e:
        if sets or flags:
            source = f"{source} (with overrides)"
        raise ConfigError(_format_error(e, source)) from None


def config_hash(section: BaseModel, *extra: Any, exclude: set[str] | None = None) -> str:
    """A stable hash of the settings that determine a stage's output (`exclude`: speed-only settings)."""
    import hashlib
    import json

    payload = json.dumps([section.model_dump(mode="json", exclude=exclude), *extra], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
