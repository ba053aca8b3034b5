"""rlaif: synthetic data and AI feedback.

Python API (each a plain function over `datasets.Dataset`):
    rlaif.generate(dataset, engine, n=4, ...) -> Dataset of candidates
    rlaif.load_engine(config_block) / rlaif.TransformersEngine(path)
"""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import rlaif` stays cheap for the CLI
    if name == "generate":
        from rlaif.stages.generate import generate

        return generate
    if name == "load_engine":
        from rlaif.engines import load_engine

        return load_engine
    if name == "TransformersEngine":
        from rlaif.engines.transformers import TransformersEngine

        return TransformersEngine
    if name == "load_config":
        from rlaif.config import load_config

        return load_config
    raise AttributeError(name)
