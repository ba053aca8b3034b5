"""rlaif judges as TRL reward functions: real GRPO steps on the toy models with every kind, rewards equal to
the judge stage's scores for the same texts, and the judgment log's schema."""

from __future__ import annotations

import json
import math

import datasets
import pyarrow.parquet as pq
import pytest

from rlaif import rewards, toy
from rlaif.config import JudgeConfig
from rlaif.errors import ConfigError, InputError
from rlaif.judges import build_judge
from rlaif.records import REWARD_LOG_FEATURES
from rlaif.rewards import read_judgment_log
from rlaif.stages.judge import judge as judge_stage

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def judge_engine(toy_paths):
    from rlaif.engines.transformers import TransformersEngine

    return TransformersEngine(str(toy_paths["judge"]), batch_size=64, display_name="toy:judge")


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, toy_paths):
    """A sequence-classification reward model on the toy judge (seeded head): what `rlaif train rm` saves."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path_factory.mktemp("rm") / "rm"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(toy_paths["judge"], num_labels=1).save_pretrained(path)
    AutoTokenizer.from_pretrained(toy_paths["judge"]).save_pretrained(path)
    return path


# kind -> (JudgeConfig fields, pairwise `against`)
KINDS = {
    "pointwise": ({"kind": "pointwise", "model": "toy:judge", "template": "toy-pointwise"}, None),
    "pairwise-group": ({"kind": "pairwise", "model": "toy:judge", "template": "toy-pairwise"}, "group"),
    "pairwise-reference": ({"kind": "pairwise", "model": "toy:judge", "template": "toy-pairwise"}, "reference"),
    "likelihood": ({"kind": "likelihood", "model": "toy:judge"}, None),
    "reward-model": ({"kind": "reward-model"}, None),
    "verifier": ({"kind": "verifier", "verifier": "rlaif.toy:accuracy_reward"}, None),
}


def make_judge(kind: str, judge_engine, reward_model_dir):
    fields, _ = KINDS[kind]
    if fields["kind"] == "reward-model":
        fields = {**fields, "model": str(reward_model_dir)}
    cfg = JudgeConfig(**fields)
    engine = judge_engine if cfg.kind in ("pointwise", "pairwise", "likelihood") else None
    return cfg, build_judge(cfg, engine)


def toy_prompts(n: int) -> datasets.Dataset:
    """Toy training prompts as TRL's conversational `prompt`, with `solution` and a `reference` answer."""
    rows = toy.prompt_rows("train")[:n]
    return datasets.Dataset.from_list([{"prompt": r["messages"], "solution": r["solution"], "reference": r["solution"]}
                                       for r in rows])


def grpo(reward, tokenizer_path, out, steps: int = 2):
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=str(out), per_device_train_batch_size=8, num_generations=4, max_completion_length=6,
                      learning_rate=1e-4, max_steps=steps, beta=0.0, bf16=False, gradient_checkpointing=False,
                      use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, seed=0)
    trainer = GRPOTrainer(model=str(tokenizer_path), reward_funcs=reward, args=args, train_dataset=toy_prompts(64),
                          processing_class=AutoTokenizer.from_pretrained(tokenizer_path))
    trainer.train()
    return trainer


def stage_rewards(judge, calls: list[list[dict]], against: str | None) -> list[float | None]:
    """The judge stage's verdicts on the logged texts, one stage run per reward call, as rewards."""
    out = []
    for rows in calls:
        candidates = []
        for r in rows:
            extra = json.loads(r["columns"])
            if against == "reference":  # the completion (0) and its reference (1) are the prompt's two candidates
                texts, pid = [r["completion"], extra["reference"]], f"row{r['row']}"
            else:
                texts, pid = [r["completion"]], f"group{r['group']}"
            for text in texts:
                index = sum(c["prompt_id"] == pid for c in candidates)
                candidates.append({"prompt_id": pid, "candidate_index": index, "prompt": r["prompt"], "text": text,
                                   "num_tokens": len(text), "finish_reason": "stop", "failure": None, **extra})
        table = datasets.Dataset.from_list(candidates)
        if judge.kind != "pairwise":
            out += judge_stage(table, judge, shard_size=10_000)["score"]
            continue
        _, comps = judge_stage(table, judge, shard_size=10_000, comparisons=True)
        wins: dict[tuple[str, int], list[float]] = {}
        for c in comps:
            wins.setdefault((c["prompt_id"], c["candidate_a"]), []).append(c["preference"])
            wins.setdefault((c["prompt_id"], c["candidate_b"]), []).append(1 - c["preference"])
        for r in rows:
            if against == "reference":
                key = (f"row{r['row']}", 0)
            else:
                key = (f"group{r['group']}", sum(q["group"] == r["group"] and q["row"] < r["row"] for q in rows))
            out.append(sum(wins[key]) / len(wins[key]))
    return out


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_grpo_trains_with_each_kind_and_rewards_equal_the_judge_stage(kind, toy_paths, judge_engine, reward_model_dir,
                                                                      tmp_path):
    cfg, judge = make_judge(kind, judge_engine, reward_model_dir)
    against = KINDS[kind][1]
    reward = rewards.judge_reward(cfg, judge=judge, against=against, log=tmp_path / "log")
    trainer = grpo(reward, toy_paths["policy"], tmp_path / "out")

    # TRL logged the reward under the callable's name, every step
    name = reward.__name__
    assert name == {"pointwise": "rlaif_pointwise", "pairwise-group": "rlaif_pairwise_vs_group",
                    "pairwise-reference": "rlaif_pairwise_vs_reference", "likelihood": "rlaif_likelihood",
                    "reward-model": "rlaif_reward_model", "verifier": "rlaif_verifier"}[kind]
    logged = [h[f"rewards/{name}/mean"] for h in trainer.state.log_history if f"rewards/{name}/mean" in h]
    assert len(logged) == 2 and all(math.isfinite(v) for v in logged)
    assert all(h[f"{name}/judge_failures"] == 0 for h in trainer.state.log_history if f"{name}/judge_failures" in h)

    log = read_judgment_log(tmp_path / "log")
    assert len(log) == 2 * 8 and set(log["call"]) == {0, 1} and set(log["reward_name"]) == {name}
    calls = [[r for r in log if r["call"] == c] for c in (0, 1)]
    for step, rows in enumerate(calls):
        # what TRL received is what the log says, and the batch held 2 prompts x 4 completions
        assert sum(r["reward"] for r in rows) / len(rows) == pytest.approx(logged[step], abs=TOLERANCE)
        assert [r["group"] for r in rows] == [0, 0, 0, 0, 1, 1, 1, 1]
        assert all(r["step"] == step for r in rows)
    assert all(r["judge_failure"] is None and r["judge_model"] == judge.provenance.judge_model for r in log)

    # the same texts through the judge stage give the same numbers
    expected = stage_rewards(judge, calls, against)
    assert [r["reward"] for rows in calls for r in rows] == pytest.approx(expected, abs=TOLERANCE)

    if judge.kind == "pairwise":
        consistency = [h[f"{name}/position_consistency"] for h in trainer.state.log_history
                       if f"{name}/position_consistency" in h]
        assert len(consistency) == 2 and all(0 <= v <= 1 for v in consistency)
        per_row = 3 if against == "group" else 1  # the other 3 of the group, or the reference
        assert all(len(r["comparisons"]) == per_row for r in log)
    if judge.kind == "pointwise":
        assert all(len(r["score_distribution"]) == 5 and 1 <= r["reward"] <= 5 for r in log)


def test_judgment_log_schema_and_appends(judge_engine, tmp_path):
    judge = build_judge(JudgeConfig(kind="pairwise", model="toy:judge", template="toy-pairwise"), judge_engine)
    reward = rewards.pairwise_reward(judge=judge, log=tmp_path / "log", num_generations=2)
    prompts = [[{"role": "user", "content": toy.question(a, b)}] for a, b in ((3, 4), (3, 4), (9, 9), (9, 9))]
    completions = [[{"role": "assistant", "content": t}] for t in ("7", "8", "18", "81")]
    values = reward(completions, prompts=prompts, solution=["7", "7", "18", "18"])
    assert len(values) == 4 and all(0 < v < 1 for v in values)
    # a group of two: the two win rates are complementary
    assert values[0] + values[1] == pytest.approx(1, abs=1e-12) and values[2] + values[3] == pytest.approx(1, abs=1e-12)
    reward(completions[:2], prompts=prompts[:2], solution=["7", "7"])

    parts = sorted((tmp_path / "log").glob("part-*.parquet"))
    assert [p.name.split("-")[1] for p in parts] == ["000000", "000001"]
    assert pq.read_schema(parts[0]).remove_metadata() == REWARD_LOG_FEATURES.arrow_schema.remove_metadata()
    log = read_judgment_log(tmp_path / "log")
    assert log.features == REWARD_LOG_FEATURES and len(log) == 6
    assert list(log.column_names) == ["time", "call", "step", "reward_name", "row", "group", "prompt", "completion",
                                      "columns", "reward", "score_distribution", "raw_text", "judge_failure",
                                      "comparisons", "judge_kind", "judge_model", "judge_engine", "template_name",
                                      "template_sha256"]
    first = log[0]
    assert first["completion"] == "7" and json.loads(first["columns"]) == {"solution": "7"}
    assert first["step"] is None and first["template_name"] == "toy-pairwise" and len(first["template_sha256"]) == 16
    (c,) = first["comparisons"]
    assert c["opponent"] == 1 and c["opponent_text"] == "8" and c["preference"] == pytest.approx(first["reward"])
    assert c["preference"] == pytest.approx((c["p_a_first"] + 1 - c["p_b_first"]) / 2)
    # the opponent's row holds the same comparison seen from its side
    (back,) = log[1]["comparisons"]
    assert back["p_a_first"] == c["p_b_first"] and back["p_b_first"] == c["p_a_first"]
    # a new writer on the same directory (a restarted run) appends after what is there
    reward2 = rewards.pairwise_reward(judge=judge, log=tmp_path / "log")
    reward2(completions[:2], prompts=prompts[:2])
    assert len(read_judgment_log(tmp_path / "log")) == 8
    assert sorted(p.name.split("-")[1] for p in (tmp_path / "log").glob("part-*.parquet"))[-1] == "000002"


def test_groups_references_and_failures(judge_engine):
    judge = build_judge(JudgeConfig(kind="pairwise", model="toy:judge", template="toy-pairwise"), judge_engine)
    q = [{"role": "user", "content": toy.question(1, 2)}]
    # without num_generations a group is a run of one prompt; a group of one has nothing to compare with
    batch = rewards.pairwise_reward(judge=judge).judge_batch([q, q, q, [{"role": "user", "content": "x"}]],
                                                            ["3", "4", "33", "3"])
    assert [r["group"] for r in batch.records] == [0, 0, 0, 1]
    assert batch.rewards[3] is None and "group of one" in batch.records[3]["judge_failure"]
    assert sum(batch.rewards[:3]) == pytest.approx(1.5)  # win rates of a round robin sum to half the games
    with pytest.raises(InputError, match="groups of num_generations=3"):
        rewards.pairwise_reward(judge=judge, num_generations=3)(["3", "4"], prompts=[q, q])
    with pytest.raises(InputError, match="holds more than one prompt"):
        rewards.pairwise_reward(judge=judge, num_generations=2)(["3", "4"], prompts=[q, "other"])
    with pytest.raises(InputError, match="column 'reference'"):
        rewards.pairwise_reward(judge=judge, against="reference")(["3"], prompts=[q], solution=["3"])
    vs_ref = rewards.pairwise_reward(judge=judge, against="reference")(["3", "4"], prompts=[q, q], reference=["3", "3"])
    assert vs_ref[0] == pytest.approx(0.5, abs=1e-9)  # the reference itself: both orders are the same prompt
    assert abs(vs_ref[1] - 0.5) > 1e-3
    with pytest.raises(ConfigError, match="judge.kind"):
        rewards.pointwise_reward({"kind": "likelihood", "model": "toy:judge"})
    with pytest.raises(ConfigError, match="'against' is for pairwise"):
        rewards.judge_reward(JudgeConfig(kind="likelihood"), judge=build_judge(JudgeConfig(kind="likelihood"),
                                                                            judge_engine), against="reference")
    with pytest.raises(InputError, match="needs the prompts"):
        rewards.likelihood_reward(judge=build_judge(JudgeConfig(kind="likelihood"), judge_engine))(["3"])
    # a verifier needs no prompts; its failures are None, not a crash
    verifier = rewards.verifier_reward(verifier="rlaif.toy:accuracy_reward")
    assert verifier(["3", " 3 ", "4"], solution=["3", "3", "3"]) == [1.0, 1.0, 0.0]
    assert verifier(["3"]) == [None]  # no solution column: the verifier raised, the row has no reward


@pytest.mark.real_model
@pytest.mark.slow
def test_grpo_with_a_pointwise_judge_on_the_real_model(tmp_path):
    """SmolLM2-135M-Instruct as policy and as its own rubric judge (the Self-Rewarding setup), 2 GRPO steps."""
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rlaif.engines import resolve_model

    model = resolve_model("smollm2:135m-instruct")
    cfg = JudgeConfig(kind="pointwise", model="smollm2:135m-instruct", template="additive", batch_size=8)
    judge = build_judge(cfg)
    reward = rewards.pointwise_reward(cfg, judge=judge, log=tmp_path / "log")
    questions = ["Name a primary colour.", "What is the capital of France?", "Say hello in French.",
                 "Give one word that rhymes with cat."]
    data = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in questions])
    args = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=16, learning_rate=1e-6, max_steps=2, beta=0.0, bf16=False,
                      gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
                      logging_steps=1, seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                          processing_class=AutoTokenizer.from_pretrained(model))
    trainer.train()
    key = "rewards/rlaif_pointwise/mean"
    logged = [h[key] for h in trainer.state.log_history if key in h]
    assert len(logged) == 2
    log = read_judgment_log(tmp_path / "log")
    assert len(log) == 8 and all(r["judge_model"] == "smollm2:135m-instruct" for r in log)
    scored = [r for r in log if r["reward"] is not None]
    assert scored and all(0 <= r["reward"] <= 5 and abs(sum(r["score_distribution"]) - 1) < 1e-6 for r in scored)
    # the rewards equal the judge stage's on the same texts, batched the same way
    expected = stage_rewards(judge, [[r for r in log if r["call"] == c] for c in (0, 1)], None)
    assert [r["reward"] for r in log] == pytest.approx(expected, abs=TOLERANCE)


def test_the_train_stage_rewards_grpo_with_the_pipeline_judge(tmp_path, toy_paths):
    """`train.grpo.reward: judge` goes through rlaif.rewards: a pairwise judge rewards the win rate in the group."""
    from rlaif.config import load_config
    from rlaif.stages.train import run_train

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(toy_paths["prompts-train"].read_text().splitlines()[:32]) + "\n")
    cfg = load_config(None, ["train.base=toy:policy", "train.max_steps=2", "train.batch_size=8",
                             "train.logging_steps=1", "train.grpo.reward=judge", "train.grpo.max_completion_length=6",
                             f"train.grpo.prompts={prompts}",
                             "judge.kind=pairwise", "judge.model=toy:judge", "judge.template=toy-pairwise"])
    result = run_train(cfg, tmp_path / "run", method="grpo", progress=False)
    history = json.loads((tmp_path / "run" / "iter-000" / "train" / "grpo" / "log_history.json").read_text())
    means = [h["rewards/rlaif_pairwise_vs_group/mean"] for h in history if "rewards/rlaif_pairwise_vs_group/mean" in h]
    # the win rates of a round robin average to exactly one half in every group
    assert len(means) == 2 and all(m == pytest.approx(0.5, abs=1e-6) for m in means)
    assert (result.checkpoint / "config.json").exists()
