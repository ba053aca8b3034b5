"""Every judge on SmolLM2-135M-Instruct (transformers, float32), over candidates the model wrote itself.

Soft verdicts are checked against a direct forward pass of the same judge prompt (no rlaif code);
text and CoT verdicts are checked for what they must be (a parsed verdict or a recorded failure
with the raw text); the shipped templates are loaded against the real tokenizer; a template whose
verdicts this vocabulary splits is refused when the judge is built.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

import rlaif
from conftest import run_cli
from rlaif.errors import ConfigError
from rlaif.judges.likelihood import LikelihoodJudge
from rlaif.judges.pairwise import PairwiseJudge
from rlaif.judges.pointwise import PointwiseJudge
from rlaif.runs import load_table, stage_dir
from rlaif.templates import PROMPTS_DIR

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

NAME = "smollm2:135m-instruct"
SUMS = [(23, 19), (7, 8), (31, 44)]


def number_reward(completions, solution, **_) -> list[float]:
    """The checker of the arithmetic prompts (TRL reward signature): the first number in the reply is the sum."""
    out = []
    for completion, sol in zip(completions, solution):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        found = re.search(r"-?\d+", text)
        out.append(1.0 if found and found.group() == str(sol) else 0.0)
    return out


@pytest.fixture(scope="module")
def run_with_candidates(smollm2_engine, tmp_path_factory):
    """A run whose generate stage holds 2 sampled answers of the model to 3 sums (with their solution)."""
    from rlaif.config import load_config
    from rlaif.stages.generate import run_generate

    root = tmp_path_factory.mktemp("judges")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"s{a}-{b}", "prompt": f"What is {a} + {b}? Reply with the number "
                                           "only.", "solution": str(a + b)}) + "\n" for a, b in SUMS))
    cfg = load_config(None, None, {"generate.input": str(prompts), "generate.model": NAME, "generate.n": 2,
                                   "generate.max_new_tokens": 12, "generate.temperature": 1.0, "seed": 1})
    run_generate(cfg, str(root / "run"), progress=False, engine=smollm2_engine)
    return root / "run"


@pytest.fixture(scope="module")
def candidates(run_with_candidates):
    cands = load_table(stage_dir(run_with_candidates, "generate"), "candidates")
    assert len(cands) == 6 and cands["failure"] == [None] * 6 and all(t.strip() for t in cands["text"])
    return cands


def direct_p_first(engine, chat: list[dict]) -> float:
    """P("1") / (P("1") + P("2")) after the judge prompt, from a plain forward pass of the model."""
    tok, model = engine.tokenizer, engine.model
    text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        probs = torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    one, two = tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("2")
    return (probs[one] / (probs[one] + probs[two])).item()


def test_pairwise_logprob_verdicts_equal_a_direct_forward_pass(smollm2_engine, candidates):
    judge = PairwiseJudge(smollm2_engine)
    _, comps = rlaif.judge(candidates, judge, comparisons=True)
    assert len(comps) == 3  # one pair per prompt (2 candidates each), both orders inside
    for c in comps:
        assert c["preference"] == pytest.approx((c["p_a_first"] + 1 - c["p_b_first"]) / 2)
        assert c["judge_model"] == NAME and c["template_name"] == "pairwise" and c["judge_failure"] is None
        assert 0 < c["p_a_first"] < 1 and 0 < c["p_b_first"] < 1
    # every verdict, whatever its place in the length-sorted, left-padded batch, is the unpadded forward pass's
    rows = {(r["prompt_id"], r["candidate_index"]): r for r in candidates.to_list()}
    for c in comps:
        a, b = rows[(c["prompt_id"], c["candidate_a"])], rows[(c["prompt_id"], c["candidate_b"])]
        q = a["prompt"][-1]["content"]
        assert c["p_a_first"] == pytest.approx(direct_p_first(smollm2_engine, judge.prompt(q, a["text"], b["text"])),
                                               abs=1e-4)
        assert c["p_b_first"] == pytest.approx(direct_p_first(smollm2_engine, judge.prompt(q, b["text"], a["text"])),
                                               abs=1e-4)


def test_pairwise_text_verdicts_are_parsed_or_recorded(smollm2_engine, candidates):
    judge = PairwiseJudge(smollm2_engine, mode="text", max_new_tokens=6, parse_retries=1)
    _, comps = rlaif.judge(candidates, judge, comparisons=True)
    for c in comps:
        for order, p in (("AB", c["p_a_first"]), ("BA", c["p_b_first"])):
            assert c[f"raw_text_{order.lower()}"] is not None
            if p is None:
                assert f"order {order}: parse failed" in c["judge_failure"]
            else:
                assert p in (0.0, 1.0)
    parsed = [p for c in comps for p in (c["p_a_first"], c["p_b_first"]) if p is not None]
    assert parsed, [(c["raw_text_ab"], c["raw_text_ba"]) for c in comps]  # the model does answer "1" or "2"


def test_pairwise_cot_reads_the_verdict_after_a_rationale(smollm2_engine, candidates):
    judge = PairwiseJudge(smollm2_engine, mode="cot", cot_max_new_tokens=24)
    _, comps = rlaif.judge(candidates.select(range(2)), judge, comparisons=True)
    [c] = comps.to_list()
    assert c["raw_text_ab"].strip() and c["raw_text_ba"].strip()  # a rationale was written, in each order
    assert 0 < c["p_a_first"] < 1 and 0 < c["p_b_first"] < 1 and c["judge_failure"] is None


def test_pointwise_additive_is_the_expected_score_of_its_distribution(smollm2_engine, candidates):
    judge = PointwiseJudge(smollm2_engine, "additive")
    assert judge.verdicts == ["0", "1", "2", "3", "4", "5"]
    scores = rlaif.judge(candidates, judge)
    for r in scores:
        dist = r["score_distribution"]
        assert len(dist) == 6 and sum(dist) == pytest.approx(1.0, abs=1e-6)
        assert r["score"] == pytest.approx(sum(p * v for p, v in zip(dist, range(6))), abs=1e-6)
        assert 0 <= r["score"] <= 5 and r["template_name"] == "additive"


def test_pointwise_ultrafeedback_averages_its_aspects(smollm2_engine, candidates):
    first = candidates.select(range(1))
    both = rlaif.judge(first, PointwiseJudge(smollm2_engine, "ultrafeedback", aspects=["helpfulness", "honesty"]))
    each = [rlaif.judge(first, PointwiseJudge(smollm2_engine, "ultrafeedback", aspects=[a]))["score"]
            for a in ("helpfulness", "honesty")]
    for k, r in enumerate(both):
        assert 1 <= r["score"] <= 5
        assert r["score"] == pytest.approx((each[0][k] + each[1][k]) / 2, abs=1e-5)


def test_likelihood_judge_prefers_the_sensible_answer(smollm2_engine):
    from datasets import Dataset

    chat = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    rows = [{"prompt_id": "fr", "prompt": chat, "candidate_index": k, "text": t, "num_tokens": 1,
             "finish_reason": "stop", "failure": None}
            for k, t in enumerate(["The capital of France is Paris.", "Purple bananas sing at noon."])]
    scores = rlaif.judge(Dataset.from_list(rows), LikelihoodJudge(smollm2_engine))["score"]
    direct = [sum(lp) / len(lp) for lp in smollm2_engine.score([chat, chat], [r["text"] + "<|im_end|>" for r in rows])]
    assert scores == pytest.approx(direct)
    assert scores[0] > scores[1] + 1.0  # nats per token


def test_shipped_templates_work_with_the_real_tokenizer(smollm2_engine):
    for path in sorted((PROMPTS_DIR / "judge").glob("*.j2")):
        judge = (PointwiseJudge if "point" in path.stem or path.stem in ("additive", "ultrafeedback") else
                 PairwiseJudge)(smollm2_engine, path.stem)
        assert all(len(smollm2_engine.tokenizer(v, add_special_tokens=False)["input_ids"]) == 1 for v in judge.verdicts)


def test_a_template_whose_verdicts_are_split_is_refused_when_loaded(smollm2_engine, tmp_path):
    template = tmp_path / "ten-point.j2"
    template.write_text("{#- verdicts: 1 2 3 4 5 6 7 8 9 10 -#}\nRate this response from 1 to 10: {{ response }}\n"
                        "Question: {{ question }} {{ tag }}")
    with pytest.raises(ConfigError) as caught:
        PointwiseJudge(smollm2_engine, str(template))
    message = str(caught.value)
    assert "'10' is 2 tokens ('1' + '0')" in message and NAME in message and str(template) in message
    PointwiseJudge(smollm2_engine, str(template), mode="text")  # text verdicts are parsed, not read as one token
    with pytest.raises(ConfigError, match="'Verdict' is 2 tokens"):
        PairwiseJudge(smollm2_engine, verdicts=["Verdict", "1"])


def test_judge_eval_cli_on_the_models_own_answers(run_with_candidates):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                        *filter(None, [os.environ.get("PYTHONPATH")])])}
    res = run_cli("judge-eval", run_with_candidates, "--judge", "pairwise", "-m", NAME, "--checker",
                  "test_real_model_judges:number_reward", "--max-pairs", "4", "--no-injection", timeout=900, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stderr + res.stdout
    pairs = int(re.search(r"│ pairs\s+│\s+(\d+)", out).group(1))
    assert 1 <= pairs <= 4
    agreement = float(re.search(r"│ agreement\s+│\s+([\d.]+)", out).group(1))
    first = float(re.search(r"│ first_position_rate\s+│\s+([\d.]+)", out).group(1))
    assert 0 <= agreement <= 1 and 0 <= first <= 1 and not math.isnan(first)


def test_judge_eval_scores_a_labelled_pair_file_and_flags_what_it_finds(smollm2_path, tmp_path):
    """`rlaif judge-eval --pairs FILE --judge pairwise -m smollm2:135m-instruct` on constraint pairs: the figures
    are consistent with each other, and every flag the figures call for is printed and stored (none other)."""
    from rlaif.judges import quality

    rows = [{"prompt": f"Write one sentence about {topic} in all lowercase letters.", "chosen": good, "rejected": bad,
             "category": "lowercase"} for topic, good, bad in [
                 ("the sea", "the sea is wide and calm today.", "The Sea Is Wide And Calm Today."),
                 ("bread", "bread smells warm in the morning.", "BREAD SMELLS WARM IN THE MORNING."),
                 ("rain", "rain taps softly on the window.", "Rain Taps Softly On The Window.")]]
    rows += [{"prompt": [{"role": "user", "content": f"Name a colour. Answer with {k} words at most."}],
              "chosen": "Blue.", "rejected": "My favourite colour of all the colours in the world is a deep blue.",
              "category": "max_words"} for k in (3, 4, 5)]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    result = run_cli("judge-eval", "--pairs", pairs, "--judge", "pairwise", "-m", NAME, "--no-injection",
                     "--out", out, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads((out / "metrics.json").read_text())
    assert figures["pairs"] == 6 and figures["judged"] == 6 and figures["failures"] == 0
    assert set(figures["by_category"]) == {"lowercase", "max_words"}
    assert sum(c["pairs"] for c in figures["by_category"].values()) == 6
    for key in ("agreement", "position_consistency", "first_position_rate", "tie_rate", "ece"):
        assert 0 <= figures[key] <= 1, key
    low, high = figures["agreement_ci95"]
    assert low <= figures["agreement"] <= high
    assert figures["flags"] == quality.flags(figures)
    for flag in figures["flags"]:
        assert flag.split(":")[0] in result.stderr
    assert "Reliability diagram" in (out / "report.html").read_text()
