"""The generate stage and the transformers engine, on the real toy policy."""

import json

import datasets
import pytest
import torch

import rlaif
from rlaif.config import load_config
from rlaif.engines import GenerationRequest
from rlaif.records import CANDIDATE_COLUMNS, SamplingParams
from rlaif.runs import load_table, read_manifest, stage_dir
from rlaif.stages.generate import generate_shard, run_generate


def toy_dataset(k=12):
    from rlaif import toy

    return datasets.Dataset.from_list(toy.prompt_rows("test")[:k])


def test_shape_columns_and_carried_extras(policy_engine):
    out = rlaif.generate(toy_dataset(12), policy_engine, n=3, max_new_tokens=6, seed=1, shard_size=5)
    assert len(out) == 12 * 3
    assert set(CANDIDATE_COLUMNS) <= set(out.column_names)
    assert {"solution", "category"} <= set(out.column_names)
    for pid, rows in _by_prompt(out).items():
        assert sorted(r["candidate_index"] for r in rows) == [0, 1, 2]
        a, b = pid.removeprefix("add-").split("-")
        assert {r["solution"] for r in rows} == {str(int(a) + int(b))}
    assert all(r["failure"] is None and r["num_tokens"] > 0 for r in out)
    # shard i is seeded with seed + i
    assert sorted(set(out["seed"])) == [1, 2, 3]


def _by_prompt(ds):
    groups = {}
    for r in ds:
        groups.setdefault(r["prompt_id"], []).append(r)
    return groups


def test_determinism_per_shard(policy_engine):
    ds = toy_dataset(10)
    first = rlaif.generate(ds, policy_engine, n=4, max_new_tokens=6, seed=7, shard_size=5)
    again = rlaif.generate(ds, policy_engine, n=4, max_new_tokens=6, seed=7, shard_size=5)
    other = rlaif.generate(ds, policy_engine, n=4, max_new_tokens=6, seed=8, shard_size=5)
    assert first["text"] == again["text"]
    assert first["text"] != other["text"]
    # the second shard regenerated alone (as after a crash) is identical to the one the full run wrote
    from rlaif.inputs import normalise_prompts

    shard = generate_shard(normalise_prompts(ds, None).select(range(5, 10)), policy_engine,
                           SamplingParams(n=4, max_new_tokens=6), seed=8)
    assert shard["text"] == first["text"][20:]


def test_logprob_sum_matches_score_and_direct_forward(policy_engine):
    chats = [[{"role": "user", "content": f"What is {a}+{b}?"}] for a, b in [(1, 2), (40, 55), (99, 99)]]
    results = policy_engine.generate([GenerationRequest(c, SamplingParams(n=2, temperature=1.0, max_new_tokens=6), 3)
                                      for c in chats])
    tok, model = policy_engine.tokenizer, policy_engine.model
    for chat, result in zip(chats, results):
        for c in result.completions:
            assert c.finish_reason == "stop"
            scored = policy_engine.score([chat], [c.text + tok.eos_token])[0]
            assert len(scored) == c.num_tokens
            assert sum(scored) == pytest.approx(c.logprob_sum, abs=1e-4)
            # direct forward pass, no rlaif code
            text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            p = tok(text, add_special_tokens=False)["input_ids"]
            full = p + tok(c.text + tok.eos_token, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)
            direct = [logp[i - 1, full[i]].item() for i in range(len(p), len(full))]
            assert scored == pytest.approx(direct, abs=1e-5)


def test_next_token_logprobs_match_direct_forward(policy_engine):
    chats = [[{"role": "user", "content": q}] for q in ("What is 3+4?", "What is 50+50?", "What is 7+80?")]
    out = policy_engine.next_token_logprobs(chats, tokens=["1", "2", "8"], top_k=5)
    tok, model = policy_engine.tokenizer, policy_engine.model
    for chat, got in zip(chats, out):
        ids = tok(tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False),
                  add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
        for t in ("1", "2", "8"):
            assert got[t] == pytest.approx(logp[tok.convert_tokens_to_ids(t)].item(), abs=1e-5)
        top = torch.topk(logp, 5)
        for v, i in zip(top.values.tolist(), top.indices.tolist()):
            assert got[tok.decode([i])] == pytest.approx(v, abs=1e-5)


def test_multi_token_verdict_is_an_error(policy_engine):
    from rlaif.errors import EngineError

    with pytest.raises(EngineError, match="single tokens"):
        policy_engine.next_token_logprobs([[{"role": "user", "content": "x"}]], tokens=["12"])


def test_chat_and_generator_templates_are_applied(policy_engine, tmp_path):
    template = tmp_path / "wrap.j2"
    template.write_text("Q: {{ prompt }} - {{ category }}")
    out = rlaif.generate(toy_dataset(2), policy_engine, n=1, max_new_tokens=4, system_prompt="Add.",
                         template=str(template))
    row = out[0]
    assert row["prompt"][0] == {"role": "system", "content": "Add."}
    assert row["prompt"][1]["content"] == f"Q: What is {row['prompt_id'][4:].replace('-', '+')}? - {row['category']}"
    # the engine encodes exactly the model's chat template of that conversation
    ids = policy_engine.encode(row["prompt"])
    expected = policy_engine.tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    assert policy_engine.tokenizer.decode(ids) == expected
    assert expected.startswith("<s>Add.\nQ: What is") and expected.endswith("\n=")


def test_stop_strings_and_length_finish(policy_engine):
    chats = [[{"role": "user", "content": "What is 55+55?"}]]
    stopped = policy_engine.generate([GenerationRequest(chats[0], SamplingParams(n=1, temperature=0, max_new_tokens=6,
                                                                                 stop=["1"]))])[0].completions[0]
    full = policy_engine.generate([GenerationRequest(chats[0], SamplingParams(n=1, temperature=0,
                                                                              max_new_tokens=6))])[0].completions[0]
    assert "1" in full.text and stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index("1")]
    short = policy_engine.generate([GenerationRequest(chats[0], SamplingParams(n=2, temperature=0,
                                                                               max_new_tokens=1))])[0]
    assert [c.finish_reason for c in short.completions] == ["length", "length"]
    assert short.completions[0].num_tokens == 1


def test_too_long_prompt_fails_its_row_only(policy_engine):
    rows = [{"id": "ok", "prompt": "What is 1+1?"}, {"id": "long", "prompt": "What is " + "9" * 300 + "+1?"}]
    out = rlaif.generate(datasets.Dataset.from_list(rows), policy_engine, n=2, max_new_tokens=4)
    by_id = _by_prompt(out)
    assert len(out) == 4
    assert all(r["failure"] is None for r in by_id["ok"])
    assert all("context is 128" in r["failure"] and r["finish_reason"] == "error" for r in by_id["long"])


def test_run_generate_writes_shards_manifest_and_resumes(tmp_path, toy_test_prompts, policy_engine):
    cfg = load_config(None, None, {"generate.input": str(toy_test_prompts), "generate.model": "toy:policy",
                                   "generate.n": 2, "generate.max_new_tokens": 6, "generate.shard_size": 16})
    run = tmp_path / "run"
    manifest = run_generate(cfg, str(run), progress=False, engine=policy_engine)
    assert manifest.status == "complete" and manifest.num_shards == 3
    assert manifest.summary["candidates"] == 80 and manifest.summary["prompts"] == 40
    files = sorted(p.name for p in (stage_dir(run, "generate") / "candidates").glob("*.parquet"))
    assert files == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    table = load_table(stage_dir(run, "generate"), "candidates")
    assert len(set(table["prompt_id"])) == 40
    # a rerun does nothing and changes nothing
    before = (stage_dir(run, "generate") / "manifest.json").read_text()
    run_generate(cfg, str(run), progress=False, engine=policy_engine)
    assert (stage_dir(run, "generate") / "manifest.json").read_text() == before
    # a speed-only setting may change on resume; an output setting may not
    faster = cfg.model_copy(deep=True)
    faster.generate.batch_size = 8
    run_generate(faster, str(run), progress=False, engine=policy_engine)
    changed = cfg.model_copy(deep=True)
    changed.generate.temperature = 0.5
    from rlaif.errors import RunError

    with pytest.raises(RunError, match="generate.temperature: 1.0 → 0.5"):
        run_generate(changed, str(run), progress=False, engine=policy_engine)
    assert json.loads(before)["status"] == read_manifest(stage_dir(run, "generate")).status


def test_skip_and_limit_choose_a_slice_of_the_prompts(tmp_path, toy_test_prompts, policy_engine):
    rows = [json.loads(line)["id"] for line in open(toy_test_prompts)]
    cfg = load_config(None, None, {"generate.input": str(toy_test_prompts), "generate.model": "toy:policy",
                                   "generate.n": 1, "generate.max_new_tokens": 2, "generate.skip": 30,
                                   "generate.limit": 6})
    run_generate(cfg, str(tmp_path / "run"), progress=False, engine=policy_engine)
    table = load_table(stage_dir(tmp_path / "run", "generate"), "candidates")
    assert list(table["prompt_id"]) == rows[30:36]
    changed = cfg.model_copy(deep=True)
    changed.generate.skip = 31
    from rlaif.errors import RunError

    with pytest.raises(RunError, match="generate.skip: 30 → 31"):  # another slice is another stage's output
        run_generate(changed, str(tmp_path / "run"), progress=False, engine=policy_engine)
