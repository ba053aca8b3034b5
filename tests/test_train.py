"""`rlaif train`: every trainer runs real TRL steps from an export, and its checkpoint loads and generates.

The exports are built here from the toy task, in the layout the export stage writes
(`iter-K/export/<kind>/`, a DatasetDict on disk): the right answer (by `rlaif.toy.check`) is
chosen and a wrong one rejected.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets
import pytest

from conftest import run_cli
from rlaif import toy
from rlaif.config import load_config
from rlaif.errors import ConfigError, InputError, RunError

FAST = ["train.base=toy:policy", "train.max_steps=4", "train.batch_size=8", "train.max_length=32",
        "train.logging_steps=1"]


def wrong_answer(solution: int, rng: random.Random, kind: str = "near") -> int:
    """A wrong sum: `near` (off by a little: hard) or `any` (uniform on 0..198: easier)."""
    while True:
        w = solution + rng.choice([-10, -2, -1, 1, 2, 10, 11]) if kind == "near" else rng.randint(0, 198)
        if w >= 0 and w != solution:
            return w


def pair_rows(split: str, n: int, seed: int = 0, kind: str = "near") -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for r in toy.prompt_rows(split)[:n]:
        right = r["solution"]
        wrong = str(wrong_answer(int(right), rng, kind))
        assert toy.check(right, right) and not toy.check(wrong, right)
        rows.append({"pair_id": f"{r['id']}-0-1", "prompt_id": r["id"], "prompt": r["messages"],
                     "chosen": [{"role": "assistant", "content": right}],
                     "rejected": [{"role": "assistant", "content": wrong}],
                     "solution": right, "margin": 1.0, "judge_kind": "verifier"})
    return rows


def write_exports(run: Path, n_train: int = 64, n_test: int = 32, iteration: int = 0, kind: str = "near") -> Path:
    """preference / unpaired / sft exports of toy pairs, as the export stage writes them."""
    root = Path(run) / f"iter-{iteration:03d}" / "export"
    train, test = pair_rows("train", n_train, 0, kind), pair_rows("test", n_test, 1, kind)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train), "test": datasets.Dataset.from_list(test)}) \
        .save_to_disk(str(root / "preference"))

    def unpaired(rows):
        return [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
                for r in rows for side in ("chosen", "rejected")]

    datasets.DatasetDict({"train": datasets.Dataset.from_list(unpaired(train))}).save_to_disk(str(root / "unpaired"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"messages": r["prompt"] + r["chosen"]} for r in train])}) \
        .save_to_disk(str(root / "sft"))
    return root


def generates(checkpoint: Path) -> list[str]:
    """The checkpoint loads through the engine and the generate stage answers with it."""
    from rlaif import generate
    from rlaif.engines.transformers import TransformersEngine

    engine = TransformersEngine(str(checkpoint), batch_size=16)
    prompts = datasets.Dataset.from_list([{"messages": r["messages"]} for r in toy.prompt_rows("test")[:4]])
    out = generate(prompts, engine, n=1, temperature=0, max_new_tokens=6)
    assert len(out) == 4 and all(f is None for f in out["failure"])
    return out["text"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, toy_paths):
    run = tmp_path_factory.mktemp("train-run")
    write_exports(run)
    return run


@pytest.mark.parametrize("method", ["sft", "dpo", "kto", "grpo"])
def test_policy_trainers_run_and_checkpoint_generates(method, exported, tmp_path):
    from rlaif.stages.train import run_train

    run = tmp_path / "run"
    (run / "iter-000").mkdir(parents=True)
    (run / "iter-000" / "export").symlink_to(exported / "iter-000" / "export")
    cfg = load_config(None, FAST + ["train.grpo.reward=rlaif.toy:accuracy_reward", "train.grpo.max_completion_length=6"])
    result = run_train(cfg, run, method=method, progress=False)
    ckpt = run / "iter-000" / "policy"
    assert result.checkpoint == ckpt and result.summary["steps"] == 4
    assert result.summary["loss_start"] is not None and result.summary["loss_end"] is not None
    meta = json.loads((ckpt / "rlaif_train.json").read_text())
    assert meta["method"] == method and meta["settings"]["train"]["max_steps"] == 4
    assert "chat_template" in (ckpt / "tokenizer_config.json").read_text() or (ckpt / "chat_template.jinja").exists()
    assert not list((run / "iter-000" / "train" / method).glob("checkpoint-*")), "working checkpoints are cleaned up"
    assert len(generates(ckpt)) == 4


def test_reward_model_trains_and_scores(exported, tmp_path):
    from rlaif.judges.base import CandidateItem
    from rlaif.judges.reward_model import RewardModelJudge
    from rlaif.stages.train import run_train

    run = tmp_path / "run"
    (run / "iter-000").mkdir(parents=True)
    (run / "iter-000" / "export").symlink_to(exported / "iter-000" / "export")
    result = run_train(load_config(None, FAST), run, method="rm", progress=False)
    assert result.checkpoint == run / "iter-000" / "reward_model"
    assert 0 <= result.summary["eval_accuracy"] <= 1 and result.summary["accuracy_end"] is not None
    judge = RewardModelJudge(str(result.checkpoint))
    prompt = [{"role": "user", "content": "What is 2+3?"}]
    scores = judge.score([CandidateItem(prompt, "5", {}), CandidateItem(prompt, "7", {})])
    assert all(isinstance(s.score, float) for s in scores) and scores[0].score != scores[1].score


@pytest.mark.slow
def test_cli_dpo_prints_summary_then_rerun_is_skipped_and_changes_refused(exported, tmp_path):
    run = tmp_path / "run"
    (run / "iter-000").mkdir(parents=True)
    (run / "iter-000" / "export").symlink_to(exported / "iter-000" / "export")
    sets = [a for s in FAST if not s.startswith("train.base") for a in ("--set", s)]
    first = run_cli("train", "dpo", run, "--base", "toy:policy", *sets)
    assert first.returncode == 0, first.stderr
    assert "loss_start" in first.stderr and "rewards/margins_end" in first.stderr and "steps" in first.stderr
    assert (run / "pipeline.yaml").exists() and (run / "iter-000" / "policy" / "model.safetensors").exists()
    again = run_cli("train", "dpo", run, "--base", "toy:policy", *sets)
    assert again.returncode == 0 and "already trained" in again.stderr
    changed = run_cli("train", "dpo", run, "--base", "toy:policy", *sets, "--lr", "3e-4")
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert "different settings" in changed.stderr and "--overwrite" in changed.stderr


def test_lora_saves_an_adapter_that_loads(exported, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlaif.stages.train import run_train

    run = tmp_path / "run"
    (run / "iter-000").mkdir(parents=True)
    (run / "iter-000" / "export").symlink_to(exported / "iter-000" / "export")
    cfg = load_config(None, FAST + ["train.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj]}",
                                    "train.learning_rate=1e-2"])
    ckpt = run_train(cfg, run, method="dpo", progress=False).checkpoint
    assert (ckpt / "adapter_config.json").exists() and (ckpt / "adapter_model.safetensors").exists()
    assert not (ckpt / "model.safetensors").exists(), "a LoRA checkpoint holds the adapter, not a full copy"
    base = AutoModelForCausalLM.from_pretrained(toy.resolve("toy:policy"))
    tuned = PeftModel.from_pretrained(base, str(ckpt))
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b), "the adapter was trained (lora_B starts at zero)"
    assert len(generates(ckpt)) == 4  # transformers loads the adapter over its base, through the engine


@pytest.mark.slow
def test_bad_config_errors_name_the_field(tmp_path, exported):
    from rlaif.stages.train import run_train

    with pytest.raises(ConfigError, match=r"unknown key 'train\.learning_rat'"):
        load_config(None, ["train.learning_rat=1e-4"])
    with pytest.raises(ConfigError, match=r"field 'train\.batch_size'.*'many'"):
        load_config(None, ["train.batch_size=many"])
    with pytest.raises(ConfigError, match=r"field 'train\.lora\.r'"):
        load_config(None, ["train.lora={r: 0}"])
    with pytest.raises(ConfigError, match=r"unknown key 'train\.grpo\.rewards'"):
        load_config(None, ["train.grpo.rewards=x"])
    bad = tmp_path / "pipeline.yaml"
    bad.write_text("train:\n  method: ppo\n")
    with pytest.raises(ConfigError, match=r"field 'train\.method'.*'ppo'"):
        load_config(bad)
    with pytest.raises(InputError, match=r"export/preference.*no preference export"):
        run_train(load_config(None, FAST), tmp_path / "empty", method="dpo", progress=False)
    run = tmp_path / "run"
    (run / "iter-000").mkdir(parents=True)
    (run / "iter-000" / "export").symlink_to(exported / "iter-000" / "export")
    with pytest.raises(ConfigError, match=r"field 'train\.grpo\.reward' is required"):
        run_train(load_config(None, FAST), run, method="grpo", progress=False)
    with pytest.raises(ConfigError, match=r"field 'train\.grpo\.reward'.*no_such_module"):
        run_train(load_config(None, FAST + ["train.grpo.reward=no_such_module:f"]), run, method="grpo", progress=False)
    cli = run_cli("train", "ppo", run, "--base", "toy:policy")
    assert cli.returncode == 2 and "Traceback" not in cli.stderr and "train.method" in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1
    run_train(load_config(None, FAST), run, method="sft", progress=False)
    with pytest.raises(RunError, match="different settings"):
        run_train(load_config(None, FAST + ["train.learning_rate=0.5"]), run, method="sft", progress=False)
