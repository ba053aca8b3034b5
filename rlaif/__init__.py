"""rlaif: synthetic data and AI feedback.

Python API (plain functions over `datasets.Dataset`, imported lazily so `import rlaif` stays cheap):
    rlaif.generate(dataset, engine, n=4, ...)        -> candidates
    rlaif.judge(candidates, rlaif.build_judge(cfg))  -> scores (and comparisons)
    rlaif.filter_pairs(scores, comparisons)          -> pairs, dropped
    rlaif.export(pairs, kind="preference")           -> DatasetDict for TRL
    rlaif.run_train(config, run) / rlaif.run_evaluate(config, run)
    rlaif.run(config_or_path, run_dir)               -> the self-improving loop
    rlaif.load_config(path), rlaif.load_engine(block), rlaif.TransformersEngine(path)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "generate": "rlaif.stages.generate:generate",
    "judge": "rlaif.stages.judge:judge",
    "build_judge": "rlaif.judges:build_judge",
    "filter_pairs": "rlaif.stages.filter:filter_pairs",
    "export": "rlaif.stages.export:export",
    "run_train": "rlaif.stages.train:run_train",
    "run_evaluate": "rlaif.stages.evaluate:run_evaluate",
    "run": "rlaif.loop:run",
    "load_config": "rlaif.config:load_config",
    "load_engine": "rlaif.engines:load_engine",
    "TransformersEngine": "rlaif.engines.transformers:TransformersEngine",
}


def __getattr__(name):
    if name not in _API:
        raise AttributeError(name)
    module, attr = _API[name].split(":")
    return getattr(importlib.import_module(module), attr)
