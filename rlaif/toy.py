"""The whole toy world in one file: tokenizer, model, task, checker, training, cache.

The toy task is two-digit addition ("What is 12+34?" -> "46"): its answers are checkable, so a
checker can evaluate policies and judges without trusting any model. One SFT run of a tiny Llama
(head_dim 64, so vLLM's CPU kernels serve it) is trained toward behaviour, not toward a step count
(floating-point detail moves a fixed-step run anywhere between chance and near-perfect):

- `policy` is snapshotted as it learns, at the first evaluation whose greedy accuracy reaches the
  middle of POLICY_BAND (an imperfect adder for the loop to improve);
- `judge` is the same run trained on until it reaches `judge_target` (a strong model of the task,
  the demo's likelihood judge).

The accuracies that choose the snapshots are measured on a validation split carved from the training
problems; `toy:test` is never seen by the build's decisions. A target not reached within the step
cap is an error, never a silently different world. Everything is built offline from a seed and
cached under $RLAIF_CACHE/toy/<world id>, the id a hash of the recipe and its targets.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from rlaif.errors import ConfigError, RunError
from rlaif.sources import cache_root

log = logging.getLogger(__name__)

TOY_VERSION = 2
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
# What every built world promises, greedy accuracy on toy:test (and on validation): the demo and the
# behaviour tests rely on these, not on one machine's numbers.
POLICY_BAND = (0.25, 0.50)
JUDGE_BAND = (0.85, 1.0)
BIASED_FIRST_SLOT_MIN = 0.95  # the position-biased judge answers "1" on at least this share of prompts
SPLIT_SEED = 0  # the problem split is the same for every recipe seed: toy:test never moves


@dataclass(frozen=True)
class ToyRecipe:
    """One SFT run toward two behaviour targets; every field is part of the world id.

    Model: a Llama of `layers` x `hidden_size`, head_dim 64, tied embeddings.
    Data: `validation_size` problems carved from train choose the snapshots; `test_size` held out.
    Optimisation: AdamW (`beta2`), linear warmup over `warmup_steps`, gradient norm clipped to
    `grad_clip`, `lr` held until the policy snapshot, then decayed linearly over `decay_steps` to
    `final_lr_fraction` of it (the decay is what carries the model from imperfect to strong).
    Policy: validation accuracy is checked every `eval_every` steps; from `approach_from` on, the
    rise toward the policy is sharp (a few points per step), so training slows to
    `approach_lr_fraction` of `lr` and checks every step, and the policy is the first step at or
    above `policy_at`. A rise that passed `policy_at` between two checks is walked again, the
    same way, from the check before it.
    Judge: checked every `judge_eval_every` steps; the first at or above `judge_target`.
    More than `max_steps` steps is an error.
    """

    seed: int = 0
    hidden_size: int = 128
    layers: int = 2
    heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 512
    max_len: int = 128
    test_size: int = 1000
    validation_size: int = 500
    batch_size: int = 128
    lr: float = 2e-3
    beta2: float = 0.98
    warmup_steps: int = 100
    grad_clip: float = 1.0
    decay_steps: int = 800
    final_lr_fraction: float = 0.05
    eval_every: int = 25
    approach_from: float = 0.15
    approach_lr_fraction: float = 0.25
    policy_at: float = 0.375
    judge_eval_every: int = 50
    judge_target: float = 0.95
    max_steps: int = 6000
    policy_band: tuple[float, float] = POLICY_BAND
    judge_band: tuple[float, float] = JUDGE_BAND


def toy_dir(recipe: ToyRecipe = ToyRecipe()) -> Path:
    import hashlib

    key = hashlib.sha256(json.dumps([TOY_VERSION, asdict(recipe)]).encode()).hexdigest()[:10]
    return cache_root() / "toy" / key


# ---------------------------------------------------------------- task and checker


def question(a: int, b: int) -> str:
    return f"What is {a}+{b}?"


def problems(seed: int = SPLIT_SEED, test_size: int = 1000, validation_size: int = 500) -> dict[str, list[tuple[int, int]]]:
    """All 10,000 problems a+b (a, b in 0..99): held-out test, validation carved from train, and train."""
    pairs = [(a, b) for a in range(100) for b in range(100)]
    random.Random(seed).shuffle(pairs)
    cut = test_size + validation_size
    return {"test": pairs[:test_size], "validation": pairs[test_size:cut], "train": pairs[cut:]}


def prompt_rows(split: str, recipe: ToyRecipe = ToyRecipe()) -> list[dict]:
    """Rows for the generate stage: a chat prompt, the checkable `solution`, and a `category`."""
    rows = []
    for a, b in problems(SPLIT_SEED, recipe.test_size, recipe.validation_size)[split]:
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


def encode_answers(tok, questions: list[str], answers: list[str]):
    """Token ids of chat prompt + answer + eos, left as a padded batch, and a loss mask on the answer tokens."""
    import torch

    ids, masks = [], []
    for q, answer in zip(questions, answers):
        p = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        f_ids = tok(p + answer + tok.eos_token, add_special_tokens=False)["input_ids"]
        ids.append(f_ids)
        masks.append([0] * len(p_ids) + [1] * (len(f_ids) - len(p_ids)))
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids])
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


# ---------------------------------------------------------------- training toward the targets


def lr_at(step: int, recipe: ToyRecipe, policy_step: int | None, approaching: bool = False) -> float:
    """Warmup, `lr` until the policy snapshot (slowed while approaching it), then a linear decay."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    if policy_step is None or step <= policy_step:
        return recipe.lr * (recipe.approach_lr_fraction if approaching else 1.0)
    frac = min(1.0, (step - policy_step) / recipe.decay_steps)
    return recipe.lr * (1 - frac * (1 - recipe.final_lr_fraction))


def environment() -> dict:
    """What moves floating-point results: the torch build, the CPU kernels in use, the thread count."""
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads()}


class _Trainer:
    """Plain torch SFT on encoded prompt + answer rows (loss on the answer), with a state to go back to."""

    def __init__(self, model, tok, input_ids, loss_mask, *, batch_size: int, seed: int, lr: float, beta2: float,
                 grad_clip: float):
        import torch

        self.model, self.input_ids, self.loss_mask = model, input_ids, loss_mask
        self.attention = (input_ids != tok.pad_token_id).long()
        self.batch_size, self.grad_clip = batch_size, grad_clip
        self.gen = torch.Generator().manual_seed(seed)
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, beta2))
        self.step = 0

    def train_step(self, lr: float) -> float:
        import torch

        for group in self.opt.param_groups:
            group["lr"] = lr
        self.model.train()
        idx = torch.randint(0, len(self.input_ids), (self.batch_size,), generator=self.gen)
        ids, mask = self.input_ids[idx], self.loss_mask[idx]
        logits = self.model(input_ids=ids, attention_mask=self.attention[idx]).logits[:, :-1]
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        self.step += 1
        return loss.item()

    def state(self) -> tuple:
        return (self.step, copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.opt.state_dict()),
                self.gen.get_state())

    def restore(self, state: tuple) -> None:
        self.step = state[0]
        self.model.load_state_dict(state[1])
        self.opt.load_state_dict(state[2])
        self.gen.set_state(state[3])


def train_toward_targets(model, tok, recipe: ToyRecipe, split: dict, on_snapshot, progress: bool = True) -> None:
    """Train until the judge target; `on_snapshot(name, step, validation_accuracy)` saves each snapshot."""
    pairs = split["train"]
    t = _Trainer(model, tok, *encode_answers(tok, [question(a, b) for a, b in pairs], [str(a + b) for a, b in pairs]),
                 batch_size=recipe.batch_size, seed=recipe.seed, lr=recipe.lr, beta2=recipe.beta2,
                 grad_clip=recipe.grad_clip)
    validation = split["validation"]
    t0 = time.perf_counter()
    policy_step, approaching, before, loss, acc = None, False, None, float("nan"), float("nan")
    while t.step < recipe.max_steps:
        loss = t.train_step(lr_at(t.step, recipe, policy_step, approaching))
        cadence = 1 if approaching else recipe.eval_every if policy_step is None else recipe.judge_eval_every
        if t.step % cadence:
            continue
        acc = greedy_accuracy(model, tok, validation)
        if progress and (t.step % 100 == 0 or approaching):
            goal = f"policy at {recipe.policy_at:.3f}" if policy_step is None else f"judge at {recipe.judge_target:.2f}"
            log.info("toy SFT step %d (cap %d): loss %.3f, validation greedy accuracy %.3f, training toward the %s "
                     "(%.1f steps/s)", t.step, recipe.max_steps, loss, acc, goal, t.step / (time.perf_counter() - t0))
        if policy_step is None and not approaching:
            if acc < recipe.approach_from:
                before = t.state()
                continue
            if acc >= recipe.policy_at and before is not None:  # passed the target between two checks: again
                t.restore(before)
            approaching = True
            log.info("toy SFT: approaching the policy from step %d: lr x %s, validation checked every step", t.step,
                     recipe.approach_lr_fraction)
        elif policy_step is None and acc >= recipe.policy_at:
            if acc > recipe.policy_band[1]:
                raise RunError(f"toy world {toy_dir(recipe).name}: the policy's validation greedy accuracy jumped "
                               f"from below {recipe.policy_at} to {acc:.3f} in one step (step {t.step}), past its "
                               f"band {list(recipe.policy_band)}: no imperfect policy to snapshot ({_where()})")
            policy_step, approaching = t.step, False
            on_snapshot("policy", t.step, acc)
        elif policy_step is not None and acc >= recipe.judge_target:
            on_snapshot("judge", t.step, acc)
            return
    reached = "the policy" if policy_step is None else "the judge"
    raise RunError(f"toy world {toy_dir(recipe).name}: {reached} did not reach its validation target within "
                   f"max_steps {recipe.max_steps} (last validation greedy accuracy {acc:.3f}, loss {loss:.3f}; "
                   f"targets: policy {recipe.policy_at}, judge {recipe.judge_target}; {_where()})")


def _where() -> str:
    env = environment()
    return f"torch {env['torch']}, {env['cpu_capability']} kernels, {env['threads']} threads"


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
    split = problems(SPLIT_SEED, recipe.test_size, recipe.validation_size)
    t0 = time.perf_counter()

    def snapshot(name: str, step: int, validation_accuracy: float) -> None:
        band = recipe.policy_band if name == "policy" else recipe.judge_band
        meta = {"name": name, "world": root.name, "step": step, "seconds": round(time.perf_counter() - t0, 1),
                "validation": {"greedy_accuracy": validation_accuracy, "n": len(split["validation"])},
                "test": {"greedy_accuracy": greedy_accuracy(model, tok, split["test"]), "n": len(split["test"])},
                "band": list(band), **environment(), "recipe": asdict(recipe)}
        _save(model, tok, paths[name], meta)
        log.info("toy %s saved at step %d: greedy accuracy validation %.3f, toy:test %.3f (band %s)", name, step,
                 validation_accuracy, meta["test"]["greedy_accuracy"], list(band))

    train_toward_targets(model, tok, recipe, split, snapshot, progress)
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


def describe(paths: dict[str, Path]) -> str:
    """The built world in a few lines: each model's accuracy against its band, and what it was built with."""
    policy, judge = metadata_of(paths["policy"]), metadata_of(paths["judge"])
    lines = [f"toy world {judge['world']}: torch {judge['torch']}, {judge['cpu_capability']} kernels, "
             f"{judge['threads']} threads, {judge['seconds']:.0f} s of training"]
    for meta in (policy, judge):
        v, t, (lo, hi) = meta["validation"], meta["test"], meta["band"]
        inside = all(lo <= x["greedy_accuracy"] <= hi for x in (v, t))
        lines.append(f"{meta['name']:<7} step {meta['step']:>5}  greedy accuracy: validation {v['greedy_accuracy']:.3f} "
                     f"(n {v['n']}), toy:test {t['greedy_accuracy']:.3f} (n {t['n']}); band [{lo:.2f}, {hi:.2f}]"
                     + ("" if inside else "  OUTSIDE ITS BAND"))
    if paths.get("biased-judge") and (paths["biased-judge"] / "toy.json").exists():
        biased = metadata_of(paths["biased-judge"])
        lines.append(f"biased-judge: answers \"1\" on {biased['first_slot_rate']:.2f} of held-out pairwise prompts")
    return "\n".join(lines)


# ---------------------------------------------------------------- position-biased judge (issue 5)

BIASED_STEPS = 40


def build_position_biased(root: Path, policy: Path, recipe: ToyRecipe = ToyRecipe(), force: bool = False) -> Path:
    """A judge that always answers "1" after the toy pairwise prompt: the position-bias tests' culprit.

    The toy policy fine-tuned for a few dozen steps on toy-pairwise prompts (right and wrong
    answers in random slots) whose target is always "1". Seconds to build; cached beside the others.
    The build checks it on held-out prompts: "1" must be its greedy verdict in both orders.
    """
    path = root / "biased-judge"
    if path.exists() and not force:
        return path
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy)
    split = problems(SPLIT_SEED, recipe.test_size, recipe.validation_size)
    rng = random.Random(recipe.seed + 1)
    prompts = [pairwise_prompt(a, b, rng) for a, b in split["train"][:512]]
    t = _Trainer(model, tok, *encode_answers(tok, prompts, ["1"] * len(prompts)), batch_size=16, seed=recipe.seed + 1,
                 lr=1e-3, beta2=0.999, grad_clip=recipe.grad_clip)
    losses = [t.train_step(1e-3) for _ in range(BIASED_STEPS)]
    held_out = [pairwise_prompt(a, b, rng) for a, b in split["test"][:64]]
    rate = first_slot_rate(model, tok, held_out)
    if rate < BIASED_FIRST_SLOT_MIN:
        raise RunError(f"toy world {root.name}: the position-biased judge answers \"1\" on {rate:.2f} of 64 held-out "
                       f"pairwise prompts after {BIASED_STEPS} steps, expected >= {BIASED_FIRST_SLOT_MIN} ({_where()})")
    meta = {"name": "biased-judge", "world": root.name, "step": BIASED_STEPS, "final_loss": round(losses[-1], 4),
            "first_slot_rate": rate, "test": {"greedy_accuracy": greedy_accuracy(model, tok, split["test"][:500]),
                                              "n": 500},
            "seconds": round(time.perf_counter() - t0, 1), **environment(), "recipe": asdict(recipe)}
    _save(model, tok, path, meta)
    log.info("toy position-biased judge saved: answers \"1\" on %.2f of held-out pairwise prompts, %.1fs", rate,
             meta["seconds"])
    return path


def pairwise_prompt(a: int, b: int, rng: random.Random) -> str:
    """The toy-pairwise judge prompt for a+b: the right answer and a near miss, in random slots."""
    from rlaif.judges.prompting import judge_template, render

    right, wrong = str(a + b), str(a + b + rng.choice([-10, -1, 1, 2, 10]))
    first, second = (right, wrong) if rng.random() < 0.5 else (wrong, right)
    return render(judge_template("toy-pairwise"), question=question(a, b), response_a=first, response_b=second)


def first_slot_rate(model, tok, prompts: list[str]) -> float:
    """Share of pairwise prompts whose greedy next token is "1" (the first slot)."""
    import torch

    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    model.eval()
    with torch.inference_mode():
        top = model(**enc).logits[:, -1].argmax(-1)
    return (top == tok.convert_tokens_to_ids("1")).float().mean().item()
