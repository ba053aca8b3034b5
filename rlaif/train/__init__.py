"""Thin wrappers over TRL trainers (SFT, reward model, DPO, KTO, GRPO) that take our datasets.

Each `build_<method>_trainer(base, train_dataset, cfg, output_dir, seed, tokenizer, ...)` maps a
`TrainConfig` onto the TRL config and returns the TRL trainer, untrained; `rlaif.stages.train`
runs it over a run directory with checkpoints and resume.
"""
