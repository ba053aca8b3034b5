"""Export: each kind goes, unchanged, into its real TRL trainer on the toy model; the round trip keeps every column."""

from __future__ import annotations

import json

import datasets
import pytest

from conftest import run_cli
from rlaif.errors import ConfigError, InputError
from rlaif.stages.export import apply_review, export, save
from rlaif.stages.filter import filter_pairs
from test_filter import cand, scores_ds, write_judge

CPU = dict(bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
           max_length=64, per_device_train_batch_size=4, max_steps=2, learning_rate=1e-4, logging_steps=1,
           dataloader_num_workers=0)


def toy_scores(n: int = 12) -> datasets.Dataset:
    """Judged toy answers: the right sum scores 1, wrong sums score 0 (as a verifier judge would)."""
    rows = []
    for i in range(n):
        a, b = 3 + 7 * i, 11 + 5 * i
        pid = f"add-{a}-{b}"
        rows += [cand(pid, 0, str(a + b + 1), 0.0), cand(pid, 1, str(a + b), 1.0), cand(pid, 2, str(a + b - 10), 0.0)]
    return scores_ds(rows)


@pytest.fixture(scope="module")
def pairs() -> datasets.Dataset:
    pairs, _ = filter_pairs(toy_scores(), strategy="all-above-margin")
    assert len(pairs) == 24 and set(pairs["chosen_index"]) == {1}
    return pairs


@pytest.fixture(scope="module")
def tokenizer(toy_paths):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(toy_paths["policy"])


def _trained(trainer) -> float:
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 2 and len(losses) == 2 and all(isinstance(x, float) for x in losses)
    return losses[-1]


def test_preference_export_trains_dpo_and_reward_model(pairs, tokenizer, toy_paths, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    data = export(pairs, "preference", test_size=0.25, seed=0)
    train = data["train"]
    assert train[0]["prompt"][0]["role"] == "user" and train[0]["chosen"][0]["role"] == "assistant"
    assert {"margin", "judge_model", "solution", "review_status"} <= set(train.column_names)
    assert not set(train["prompt_id"]) & set(data["test"]["prompt_id"]) and len(set(data["test"]["prompt_id"])) == 3
    dpo = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(toy_paths["policy"]),
                     args=DPOConfig(output_dir=str(tmp_path / "dpo"), beta=0.1, **CPU),
                     train_dataset=train, processing_class=tokenizer)
    _trained(dpo)
    rm = AutoModelForSequenceClassification.from_pretrained(toy_paths["policy"], num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    reward = RewardTrainer(model=rm, args=RewardConfig(output_dir=str(tmp_path / "rm"), **CPU),
                           train_dataset=train, processing_class=tokenizer)
    _trained(reward)


def test_unpaired_export_trains_kto(pairs, tokenizer, toy_paths, tmp_path):
    from transformers import AutoModelForCausalLM
    from trl import KTOConfig, KTOTrainer

    train = export(pairs, "unpaired")["train"]
    assert len(train) == 36 and sum(train["label"]) == 12  # 12 right answers, 24 distinct wrong ones
    assert all(row["completion"][0]["content"] == row["solution"] for row in train if row["label"])
    kto = KTOTrainer(model=AutoModelForCausalLM.from_pretrained(toy_paths["policy"]),
                     args=KTOConfig(output_dir=str(tmp_path / "kto"), beta=0.1, **CPU),
                     train_dataset=train, processing_class=tokenizer)
    _trained(kto)


def test_sft_export_trains_sft(pairs, tokenizer, toy_paths, tmp_path):
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    train = export(pairs, "sft")["train"]
    assert len(train) == 12 and all(r["messages"][-1]["content"] == r["solution"] for r in train)
    assert [m["role"] for m in train[0]["messages"]] == ["user", "assistant"]
    sft = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(toy_paths["policy"]),
                     args=SFTConfig(output_dir=str(tmp_path / "sft"), **CPU),
                     train_dataset=train, processing_class=tokenizer)
    _trained(sft)


def test_text_form_and_round_trip_keep_every_column(pairs, tmp_path):
    text = export(pairs, "preference", conversational=False)["train"]
    assert text[0]["prompt"].startswith("What is ") and text[0]["chosen"] == text[0]["solution"]
    sft_text = export(pairs, "sft", conversational=False)["train"]
    assert {"prompt", "completion"} <= set(sft_text.column_names)
    data = export(pairs, "preference", test_size=4, seed=1)
    for fmt in ("hf", "jsonl", "parquet"):
        path = save(data, tmp_path / fmt, fmt, "preference")
        if fmt == "hf":
            back = datasets.load_from_disk(str(path))
        else:
            back = datasets.load_dataset(fmt if fmt == "parquet" else "json",
                                         data_files={s: str(path / f"{s}.{fmt}") for s in ("train", "test")})
        assert set(back) == {"train", "test"} and len(back["test"]) == len(data["test"])
        assert back["train"].column_names == data["train"].column_names
        assert back["train"].to_list() == data["train"].to_list()
    trl_only = datasets.load_from_disk(str(save(data, tmp_path / "trl", "trl", "preference")))
    assert trl_only["train"].column_names == ["prompt", "chosen", "rejected"]


def test_review_status_and_bad_options(pairs):
    statuses = ["agreed", "disagreed", "tie", "both-bad"] + ["unreviewed"] * (len(pairs) - 4)
    reviewed = apply_review(pairs.remove_columns("review_status").add_column("review_status", statuses))
    assert len(reviewed) == len(pairs) - 2
    flipped = reviewed[1]
    assert flipped["review_status"] == "disagreed" and flipped["chosen"] == pairs[1]["rejected"]
    only = apply_review(pairs.remove_columns("review_status").add_column("review_status", statuses), reviewed_only=True)
    assert only["review_status"] == ["agreed", "disagreed"]
    with pytest.raises(ConfigError, match="preference, unpaired, sft"):
        export(pairs, "dpo")
    with pytest.raises(ConfigError, match="hf, trl, jsonl, parquet"):
        save(export(pairs), "/tmp/never", "csv", "preference")
    with pytest.raises(ConfigError, match="test_size"):
        export(pairs, test_size=12)
    with pytest.raises(InputError, match="no preference pairs"):
        export(pairs.select([]))


@pytest.mark.slow
def test_cli_filter_then_export_into_the_run(tmp_path):
    run = tmp_path / "run"
    write_judge(run, [(toy_scores(8).to_list(), [])])
    assert run_cli("filter", run, "-q").returncode == 0
    r = run_cli("export", run, "--kind", "sft", "--test-size", "0.25", "--out", tmp_path / "copy", "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    saved = datasets.load_from_disk(str(run / "iter-000" / "export" / "sft"))
    assert len(saved["train"]) == 6 and len(saved["test"]) == 2
    assert len((tmp_path / "copy" / "train.jsonl").read_text().splitlines()) == 6
    assert json.loads((run / "iter-000" / "export" / "sft" / "rlaif_export.json").read_text())["train rows"] == 6
    assert run_cli("export", run, "-q").returncode == 0
    assert datasets.load_from_disk(str(run / "iter-000" / "export" / "preference"))["train"].num_rows == 8
    bad = run_cli("export", run, "--kind", "dpo")
    assert bad.returncode == 2 and "export.kind" in bad.stderr and "'preference', 'unpaired' or 'sft'" in bad.stderr
    bad = run_cli("export", run, "--format", "csv", "--out", tmp_path / "x")
    assert bad.returncode == 2 and "export.format" in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------- extra pairs (export.extra_pairs)

LOWERCASE = "Describe the sea in lowercase letters."


def write_generate(run, rows: list[dict]) -> None:
    """A finished generate stage holding `rows` (candidate columns plus the task's constraint columns)."""
    from rlaif.records import CANDIDATE_FEATURES, with_columns
    from rlaif.runs import StageWriter, stage_dir

    features = with_columns(CANDIDATE_FEATURES, {"constraint": datasets.Value("string"),
                                                 "constraint_args": datasets.Value("string")})
    full = [{**{c: None for c in features}, "sampling": None, **r} for r in rows]
    writer = StageWriter(stage_dir(run, "generate"), stage="generate", config_hash="crafted", input_fingerprint="x",
                         config={}, num_shards=1, shard_size=64)
    writer.write_shard(0, {"candidates": datasets.Dataset.from_list(full, features=features)}, 0.1,
                       {"candidates": len(rows)})
    writer.finish({})


@pytest.fixture()
def lowercase_run(tmp_path):
    """4 lowercase prompts, each with one obeying and one breaking answer, judged by the verifier."""
    run = tmp_path / "run"
    texts = ("the sea is blue and deep.", "The Sea is wide, cold and grey today.")
    generated, scored = [], []
    for p in range(4):
        for k, text in enumerate(texts):
            row = {"prompt_id": f"sea-{p}", "candidate_index": k, "text": text, "finish_reason": "stop",
                   "prompt": [{"role": "user", "content": f"{LOWERCASE} (#{p})"}]}
            generated.append({**row, "constraint": "lowercase", "constraint_args": "{}"})
            scored.append({**cand(f"sea-{p}", k, text, 1.0 - k), "prompt": row["prompt"]})
    write_generate(run, generated)
    write_judge(run, [(scored, [])])
    assert run_cli("filter", run, "-q", "--set", "filter.strategy=all-above-margin", "--set",
                   "filter.dedup_prompts=false").returncode == 0
    return run


def test_extra_pairs_join_the_train_split_only(lowercase_run):
    from rlaif.tasks import verify

    r = run_cli("export", lowercase_run, "--test-size", "0.25", "--set", "export.extra_pairs=rlaif.tasks:edit_pairs")
    assert r.returncode == 0, r.stderr
    path = lowercase_run / "iter-000" / "export" / "preference"
    saved = datasets.load_from_disk(str(path))
    test_prompts = set(saved["test"]["prompt_id"])
    extra = [row for row in saved["train"] if row["strategy"] == "rlaif.tasks:edit_pairs"]
    judged = [row for row in saved["train"] if row["strategy"] != "rlaif.tasks:edit_pairs"]
    # 3 train prompts x 2 answers: each answer gives one edited pair; the held-out prompt gives none
    assert len(test_prompts) == 1 and len(judged) == 3 and len(extra) == 6
    assert not test_prompts & {row["prompt_id"] for row in extra}
    chosen = [row["chosen"][0]["content"] for row in extra]
    rejected = [row["rejected"][0]["content"] for row in extra]
    assert verify(chosen, ["lowercase"] * 6, ["{}"] * 6) == [1.0] * 6
    assert verify(rejected, ["lowercase"] * 6, ["{}"] * 6) == [0.0] * 6
    assert all(row["judge_kind"] is None and row["chosen"][0]["role"] == "assistant" for row in extra)
    record = json.loads((path / "rlaif_export.json").read_text())
    assert record["extra pairs (rlaif.tasks:edit_pairs)"] == 6 and record["train rows"] == 9


def rows_without_chosen(candidates):
    return [{"prompt_id": "sea-0", "prompt": candidates[0]["prompt"], "rejected": "x"}]


def test_extra_pairs_errors_name_the_field(lowercase_run):
    from rlaif.config import load_config
    from rlaif.stages.export import run_export

    with pytest.raises(ConfigError) as e:
        run_export(load_config(None, ["export.extra_pairs=test_export:rows_without_chosen"]), str(lowercase_run))
    assert str(e.value) == ("field 'export.extra_pairs': test_export:rows_without_chosen returned row 0 without "
                            "chosen; expected rows with prompt_id, prompt, chosen, rejected (chosen and rejected "
                            "as text)")
    bad = run_cli("export", lowercase_run, "--kind", "sft", "--set", "export.extra_pairs=rlaif.tasks:edit_pairs")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: field 'export.extra_pairs' applies to export.kind preference, not 'sft'")
    bad = run_cli("export", lowercase_run, "--set", "export.extra_pairs=rlaif.tasks:no_such_function")
    assert bad.returncode == 2 and "export.extra_pairs" in bad.stderr and "Traceback" not in bad.stderr
