"""Shared fixtures: the toy world is built once per test session into one cache.

RLAIF_CACHE is set here (before anything imports rlaif) so every subprocess the tests start
finds the same toy models. Override it to share a cache across checkouts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("RLAIF_CACHE", str(REPO / ".cache" / "rlaif"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning: the same arithmetic, and on a busy CPU (CI machines are
# often shared) torch's 2-thread training steps ran 10x faster (1.1 s vs 12 s per toy step, measured).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
RLAIF = [sys.executable, "-m", "rlaif.cli"]


def pytest_report_header(config) -> str:
    """Which toy world the session uses, and how it was built (kernels and threads move its numbers)."""
    from rlaif import toy

    root = toy.toy_dir()
    if not (root / "judge" / "toy.json").exists():
        return f"toy world {root.name}: not built yet (the first test that needs it builds it, a few minutes)"
    return toy.describe({name: root / name for name in ("policy", "judge", "biased-judge")})


@pytest.fixture(scope="session")
def toy_paths() -> dict[str, Path]:
    from rlaif import toy

    return toy.build()


@pytest.fixture(scope="session")
def policy_engine(toy_paths):
    from rlaif.engines.transformers import TransformersEngine

    return TransformersEngine(str(toy_paths["policy"]), batch_size=64)


@pytest.fixture(scope="session")
def toy_test_prompts(toy_paths):
    """The first 40 held-out toy prompts, as a JSONL file."""
    import json

    path = toy_paths["prompts-test"].parent / "test-40.jsonl"
    lines = toy_paths["prompts-test"].read_text().splitlines()[:40]
    path.write_text("\n".join(lines) + "\n")
    assert len(json.loads(lines[0])["messages"]) == 1
    return path


def run_cli(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run `rlaif ...` in a real subprocess."""
    return subprocess.run([*RLAIF, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct as a plain float32 checkpoint, converted once into the cache (tests marked real_model)."""
    from rlaif import sources

    return Path(sources.resolve("smollm2:135m-instruct"))


@pytest.fixture(scope="session")
def smollm2_engine(smollm2_path):
    """One transformers engine of SmolLM2 (float32) shared by the real-model tests."""
    from rlaif.engines.transformers import TransformersEngine

    return TransformersEngine(str(smollm2_path), dtype="float32", batch_size=16, display_name="smollm2:135m-instruct")
