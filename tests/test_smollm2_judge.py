"""The judge fine-tuned from SmolLM2 (`smollm2:135m-ifeval-rm`): named with its build command until built, and
built end to end at a tiny size by the same code as the shipped recipe (real model, transformers engine)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import run_cli
from rlaif import smollm2_judge, sources
from rlaif.errors import ConfigError
from rlaif.runs import read_manifest, stage_dir

TINY = ["generate.engine=transformers", "generate.limit=12", "generate.max_new_tokens=40", "train.max_steps=2",
        "export.test_size=2", "train.save_steps=1"]


def test_an_unbuilt_judge_is_an_error_naming_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setenv("RLAIF_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="rlaif smollm2 build-judge"):
        sources.resolve("smollm2:135m-ifeval-rm")
    result = run_cli("smollm2", "path", "135m-ifeval-rm", env={**os.environ, "RLAIF_CACHE": str(tmp_path)})
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "is not built yet" in result.stderr
    # the name is the shipped recipe's: another recipe builds elsewhere
    assert smollm2_judge.build_dir(smollm2_judge.recipe(TINY)) != smollm2_judge.build_dir(smollm2_judge.recipe())


@pytest.mark.real_model
@pytest.mark.slow
def test_a_tiny_build_trains_a_reward_model_that_scores_answers(smollm2_path):
    from rlaif.judges.base import CandidateItem
    from rlaif.judges.reward_model import RewardModelJudge

    run = smollm2_judge.build_dir(smollm2_judge.recipe(TINY))
    shutil.rmtree(run, ignore_errors=True)
    try:
        built = smollm2_judge.build(TINY, progress=False)
        assert built["train_pairs"] > 0 and built["skipped_prompts"] == 256 and built["prompts_used"] == 12
        assert json.loads((run / smollm2_judge.BUILT).read_text()) == built
        assert built["model"] == str(smollm2_judge.model_dir(run)) and (run / "iter-000" / "reward_model").is_dir()
        assert read_manifest(stage_dir(run, "judge")).config["kind"] == "verifier"  # labelled by the verifiers
        extra = built["export"]["extra pairs (rlaif.tasks:edit_pairs)"]  # minimal pairs beside the judged ones
        assert 0 < extra < built["train_pairs"] == built["export"]["train rows"]
        # a build killed after training resumes without redoing a stage
        (run / smollm2_judge.BUILT).unlink()
        finished = {stage: (stage_dir(run, stage) / "manifest.json").read_text() for stage in ("generate", "judge")}
        again = smollm2_judge.build(TINY, progress=False)
        assert again["train_pairs"] == built["train_pairs"]
        assert finished == {stage: (stage_dir(run, stage) / "manifest.json").read_text() for stage in finished}
        judge = RewardModelJudge(built["model"], dtype="float32")
        prompt = [{"role": "user", "content": "Write one sentence about the sea in all lowercase letters."}]
        scores = judge.score([CandidateItem(prompt, "the sea is calm today.", {}),
                              CandidateItem(prompt, "The Sea Is Calm Today.", {})])
        assert all(isinstance(s.score, float) for s in scores) and scores[0].score != scores[1].score
    finally:
        shutil.rmtree(run, ignore_errors=True)
