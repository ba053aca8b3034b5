"""The whole toy world in one file: tokenizer, model, task, checker, training, cache.

The toy task is two-digit addition ("What is 12+34?" -> "46"): its answers are checkable, so a
checker can evaluate policies and judges without trusting any model. One SFT run of a tiny Llama
(head_dim 64, so vLLM's CPU kernels serve it) is snapshotted twice: early (`policy`, imperfect:
~.37 greedy accuracy on held-out prompts) and at the end (`judge`, a stronger model of the same task,
~.86; as a likelihood judge it agrees with the checker on ~.95 of right-vs-wrong pairs). Everything
is built offline, deterministically from a seed, and cached under $RLAIF_CACHE/toy.
"""

from __future__ import annotations

import json
import logging

import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from rlaif.errors import ConfigError
from rlaif.sources import cache_root

log = logging.getLogger(__name__)

TOY_VERSION = 1
CHARS = list("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ +-*=?:.,!\n")
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
# The prompt (with add_generation_prompt) is an exact prefix of prompt + answer, as TRL requires.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}={{ m['content'] }}{{ eos_token }}\n"
    "{% else %}{{ m['content'] }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}={% endif %}"
)
MODELS = ("policy", "judge")


@dataclass(frozen=True)
class ToyRecipe:
    """One SFT run; `policy_step` is snapshotted as the imperfect policy, the end as the judge."""

    seed: int = 0
    hidden_size: int = 128
    layers: int = 2
    heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 512
    max_len: int = 128
    batch_size: int = 128
    lr: float = 2e-3
    hold_fraction: float = 0.6
    final_lr_fraction: float = 0.05
    policy_step: int = 1800
    judge_step: int = 2400
    test_size: int = 1000


def toy_dir(recipe: ToyRecipe = ToyRecipe()) -> Path:
    import hashlib

    key = hashlib.sha256(json.dumps([TOY_VERSION, asdict(recipe)]).encode()).hexdigest()[:10]
    return cache_root() / "toy" / key


# ---------------------------------------------------------------- task and checker


def question(a: int, b: int) -> str:
    return f"What is {a}+{b}?"


def problems(seed: int = 0, test_size: int = 1000) -> dict[str, list[tuple[int, int]]]:
    """All 10,000 problems a+b (a, b in 0..99), split into train and held-out test."""
    pairs = [(a, b) for a in range(100) for b in range(100)]
    random.Random(seed).shuffle(pairs)
    return {"test": pairs[:test_size], "train": pairs[test_size:]}


def prompt_rows(split: str, recipe: ToyRecipe = ToyRecipe()) -> list[dict]:
    """Rows for the generate stage: a chat prompt, the checkable `solution`, and a `category`."""
    rows = []
    for a, b in problems(recipe.seed, recipe.test_size)[split]:
        category = "carry" if (a % 10 + b % 10) >= 10 else "no-carry"
        rows.append(
            {
                "id": f"add-{a}-{b}",
                "messages": [{"role": "user", "content": question(a, b)}],
                "solution": str(a + b),
                "category": category,
            }
        )
    return rows


def check(completion: str, solution: str) -> bool:
    """The toy checker: the stripped answer equals the sum."""
    return completion.strip() == str(solution).strip()


def accuracy_reward(completions: list, solution: list[str], **_) -> list[float]:
    """TRL reward-function signature: 1.0 for a right answer, 0.0 otherwise."""
    out = []
    for completion, sol in zip(completions, solution):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        out.append(1.0 if check(text, sol) else 0.0)
    return out


# ---------------------------------------------------------------- tokenizer and model


def build_tokenizer():
    """Character-level tokenizer: BPE with an explicit vocab and no merges (77 tokens)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + CHARS)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    core.add_special_tokens(SPECIAL)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_model(tok, recipe: ToyRecipe):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(recipe.seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=recipe.hidden_size,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.heads,
        head_dim=recipe.head_dim,
        intermediate_size=recipe.intermediate_size,
        max_position_embeddings=recipe.max_len,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(config)


def _encode_examples(tok, pairs):
    """Token ids of prompt + answer + eos and a loss mask on the answer tokens only."""
    import torch

    ids, masks = [], []
    for a, b in pairs:
        messages = [{"role": "user", "content": question(a, b)}]
        p = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full = p + str(a + b) + tok.eos_token
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        f_ids = tok(full, add_special_tokens=False)["input_ids"]
        ids.append(f_ids)
        masks.append([0] * len(p_ids) + [1] * (len(f_ids) - len(p_ids)))
    width = max(len(x) for x in ids)
    pad = tok.pad_token_id
    input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    loss_mask = torch.tensor([m + [0] * (width - len(m)) for m in masks])
    return input_ids, loss_mask


def greedy_accuracy(model, tok, pairs, batch_size: int = 500, sample: bool = False, seed: int = 0) -> float:
    """Checked accuracy of greedy (or T=1 sampled) answers on `pairs`."""
    import torch

    torch.manual_seed(seed)
    right = 0
    model.eval()
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        texts = [
            tok.apply_chat_template([{"role": "user", "content": question(a, b)}], add_generation_prompt=True, tokenize=False)
            for a, b in chunk
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=5, do_sample=sample, temperature=1.0 if sample else None,
                top_p=None, top_k=None, pad_token_id=tok.pad_token_id,
            )
        answers = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        right += sum(check(ans, str(a + b)) for ans, (a, b) in zip(answers, chunk))
    return right / len(pairs)


def _lr_at(step: int, recipe: ToyRecipe) -> float:
    hold = int(recipe.judge_step * recipe.hold_fraction)
    if step < hold:
        return recipe.lr
    frac = (step - hold) / max(1, recipe.judge_step - hold)
    return recipe.lr * (1 - frac * (1 - recipe.final_lr_fraction))


def _save(model, tok, path: Path, meta: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "toy.json").write_text(json.dumps(meta, indent=2))
    if path.exists():
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)


def build(recipe: ToyRecipe = ToyRecipe(), force: bool = False, progress: bool = True) -> dict[str, Path]:
    """Build (or reuse) the toy models and prompt files; returns their paths."""
    root = toy_dir(recipe)
    root.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (parallel tests, a demo beside a test run) may ask at once: build once.
    with FileLock(str(root) + ".lock"):
        return _build_locked(root, recipe, force, progress)


def _build_locked(root: Path, recipe: ToyRecipe, force: bool, progress: bool) -> dict[str, Path]:
    import torch

    paths = {name: root / name for name in MODELS}
    paths.update({f"prompts-{s}": root / f"prompts-{s}.jsonl" for s in ("train", "test")})
    if not force and all(p.exists() for p in paths.values()):
        paths["biased-judge"] = build_position_biased(root, paths["policy"], recipe)
        return paths
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with open(paths[f"prompts-{split}"].with_suffix(".tmp"), "w") as f:
            for row in prompt_rows(split, recipe):
                f.write(json.dumps(row) + "\n")
        os.replace(paths[f"prompts-{split}"].with_suffix(".tmp"), paths[f"prompts-{split}"])

    tok = build_tokenizer()
    model = build_model(tok, recipe)
    split = problems(recipe.seed, recipe.test_size)
    train_pairs, test_pairs = split["train"], split["test"]
    input_ids, loss_mask = _encode_examples(tok, train_pairs)
    attention = (input_ids != tok.pad_token_id).long()
    gen = torch.Generator().manual_seed(recipe.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr)
    t0 = time.perf_counter()
    model.train()
    for step in range(1, recipe.judge_step + 1):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step - 1, recipe)
        idx = torch.randint(0, len(train_pairs), (recipe.batch_size,), generator=gen)
        ids, mask, att = input_ids[idx], loss_mask[idx], attention[idx]
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and step % 100 == 0:
            rate = step / (time.perf_counter() - t0)
            log.info("toy SFT step %d/%d loss %.3f (%.1f steps/s, ETA %.0fs)", step, recipe.judge_step, loss.item(),
                     rate, (recipe.judge_step - step) / rate)
        if step in (recipe.policy_step, recipe.judge_step):
            name = "policy" if step == recipe.policy_step else "judge"
            eval_pairs = test_pairs[:500]
            meta = {
                "name": name,
                "step": step,
                "recipe": asdict(recipe),
                "greedy_accuracy_test500": greedy_accuracy(model, tok, eval_pairs),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            model.train()
            _save(model, tok, paths[name], meta)
            log.info("toy %s saved at step %d: greedy accuracy %.3f", name, step, meta["greedy_accuracy_test500"])
    paths["biased-judge"] = build_position_biased(root, paths["policy"], recipe, force=True)
    return paths


def resolve(name: str) -> str:
    """`toy:policy`, `toy:judge`, `toy:train`, `toy:test` -> a path in the cache (built on first use)."""
    key = name.split(":", 1)[1]
    lookup = {"policy": "policy", "judge": "judge", "train": "prompts-train", "test": "prompts-test",
              "biased-judge": "biased-judge"}
    if key not in lookup:
        raise ConfigError(f"{name!r}: unknown toy name; expected one of " + ", ".join(f"toy:{k}" for k in lookup))
    return str(build()[lookup[key]])


def is_toy(name: str | None) -> bool:
    return bool(name) and name.startswith("toy:")


def metadata_of(path: str | Path) -> dict:
    return json.loads((Path(path) / "toy.json").read_text())


# ---------------------------------------------------------------- position-biased judge (issue 5)

BIASED_STEPS = 40


def build_position_biased(root: Path, policy: Path, recipe: ToyRecipe = ToyRecipe(), force: bool = False) -> Path:
    """A judge that always answers "1" after the toy pairwise prompt: the position-bias tests' culprit.

    The toy policy fine-tuned for a few dozen steps on toy-pairwise prompts (right and wrong
    answers in random slots) whose target is always "1". Seconds to build; cached beside the others.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlaif.judges.prompting import judge_template, render

    path = root / "biased-judge"
    if path.exists() and not force:
        return path
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy)
    template = judge_template("toy-pairwise")
    rng = random.Random(recipe.seed + 1)
    ids, masks = [], []
    for a, b in problems(recipe.seed, recipe.test_size)["train"][:512]:
        right, wrong = str(a + b), str(a + b + rng.choice([-10, -1, 1, 2, 10]))
        first, second = (right, wrong) if rng.random() < 0.5 else (wrong, right)
        chat = [{"role": "user", "content": render(template, question=question(a, b), response_a=first,
                                                   response_b=second)}]
        p = tok(tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False), add_special_tokens=False)
        p_ids = p["input_ids"]
        f_ids = p_ids + tok("1" + tok.eos_token, add_special_tokens=False)["input_ids"]
        ids.append(f_ids)
        masks.append([0] * len(p_ids) + [1] * (len(f_ids) - len(p_ids)))
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids])
    loss_mask = torch.tensor([m + [0] * (width - len(m)) for m in masks])
    attention = (input_ids != tok.pad_token_id).long()
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(BIASED_STEPS):
        idx = torch.randint(0, len(ids), (16,), generator=gen)
        logits = model(input_ids=input_ids[idx], attention_mask=attention[idx]).logits[:, :-1]
        target = input_ids[idx][:, 1:].masked_fill(loss_mask[idx][:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    meta = {"name": "biased-judge", "step": BIASED_STEPS, "recipe": asdict(recipe), "final_loss": round(loss.item(), 4),
            "greedy_accuracy_test500": greedy_accuracy(model, tok, problems(recipe.seed, recipe.test_size)["test"][:500]),
            "seconds": round(time.perf_counter() - t0, 1)}
    _save(model, tok, path, meta)
    log.info("toy position-biased judge saved: loss %.4f in %.1fs", meta["final_loss"], meta["seconds"])
    return path
