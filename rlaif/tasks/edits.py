"""Minimal pairs for training a judge: a model's answer, edited to obey or to break its row's constraint.

Pass-vs-fail pairs of a model's own answers differ in much besides the constraint (length, topic,
wording), and a small judge trained on them learns those differences as readily as the constraint.
An edit changes only what the check reads (the case, the last words, a keyword, the bullets, the
number), so an answer and its edit differ in the constraint alone. Every edited answer is checked
again by the verifier: a pair is kept only when its chosen side passes and its rejected side fails,
so no label is assumed from the edit.

`EDITS[constraint]` is its pair of edits, `obey(text, args, rng, others)` and `breach(...)`, each
returning the edited text or None when it does not apply (`others` are other answers to the same
prompt, for edits that need more words). `edit_pairs(candidates)` turns candidate rows into pairs: a
passing answer against its breach, an obeying edit against a failing answer.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable

from rlaif.tasks.constraints import (BULLET, CONSTRAINTS, FENCE, KEYWORDS, NUMBER, POSTSCRIPT, QUOTES, TITLE, WORD,
                                     has_word, words)
from rlaif.tasks.facts import FACTS
from rlaif.tasks.ifeval import CHECKS, wordings

SENTENCE_START = re.compile(r"(^|[.!?]\s+)([a-z])")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
POSTSCRIPTS = ["P.S. Thank you for reading.", "P.S. I hope this helps.", "P.S. Have a lovely day.",
               "P.S. Write back soon."]
ANSWERS = sorted({a for accepted in FACTS.values() for a in accepted})

Edit = Callable[[str, dict, random.Random, list[str]], "str | None"]


def _sentence_case(text: str) -> str:
    return SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), text)


def _cut(text: str, n: int) -> str | None:
    """The text up to the end of its n-th word, closed with a full stop."""
    found = list(WORD.finditer(text))
    if n < 1 or len(found) < n:
        return None
    return text[:found[n - 1].end()].rstrip(" ,;:-") + "."


def _longer(text: str, others: list[str], n: int, rng: random.Random) -> str | None:
    """The text followed by words of other answers to the same prompt, up to a few words past n: as long
    as the constraint needs, no longer."""
    extra = [w for other in others for w in other.split()]
    need = n + 1 - len(words(text)) + rng.randint(0, 4)
    if need <= 0:
        return text
    if len(extra) < need:
        return None
    return f"{text.strip()} {' '.join(extra[:need]).rstrip(',;:')}".rstrip(".") + "."


def _replace_word(text: str, rng: random.Random, new: str) -> str | None:
    """One word (not the first) replaced by `new`: the length stays, one word changes."""
    found = list(WORD.finditer(text))[1:]
    if not found:
        return None
    m = rng.choice(found)
    return text[:m.start()] + new + text[m.end():]


def _without_word(text: str, word: str, rng: random.Random) -> str:
    """Every whole-word use of `word` (or its plural) replaced by another keyword."""
    other = rng.choice([k for k in KEYWORDS if k != word.lower()])
    return re.sub(rf"(?<![^\W_]){re.escape(word)}(?:e?s)?(?![^\W_])", other, text, flags=re.IGNORECASE)


def _pieces(text: str, n: int) -> list[str] | None:
    """The text in n non-empty pieces, in order (for bullets and JSON values): its first n sentences when it
    has that many, else n even runs of its words."""
    sentences = [s.strip() for s in SENTENCE_END.split(text) if words(s)]
    if len(sentences) >= n:
        return sentences[:n]
    found = words(text)
    if len(found) < n:
        return None
    size = len(found) / n
    return [" ".join(found[round(i * size):round((i + 1) * size)]) for i in range(n)]


def _bulleted(text: str) -> list[str]:
    return [line for line in text.splitlines() if BULLET.match(line)]


# ---------------------------------------------------------------- per constraint: (obey, breach)


def _bullets_obey(text, args, rng, others):
    lines = _bulleted(text)
    n = args["n"]
    if len(lines) > n:
        return "\n".join(lines[:n])
    body = " ".join(re.sub(r"^\s*[*\-•]\s+", "", line) for line in text.splitlines())
    pieces = _pieces(body, n)
    return None if pieces is None else "\n".join(f"* {p}" for p in pieces)


def _bullets_breach(text, args, rng, others):
    lines = _bulleted(text)
    if len(lines) < 2:
        return None
    if rng.random() < 0.5:
        return "\n".join(lines[:-1])
    return "\n".join([*lines, lines[-1]])


def _json_obey(text, args, rng, others):
    pieces = _pieces(text, len(args["keys"]))
    if pieces is None:
        return None
    return json.dumps(dict(zip(args["keys"], pieces)), indent=rng.choice([None, 2]))


def _json_breach(text, args, rng, others):
    body = text.strip()
    fenced = FENCE.match(body)
    try:
        value = json.loads(fenced.group(1) if fenced else body)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    value.pop(rng.choice(args["keys"]), None)
    return json.dumps(value, indent=rng.choice([None, 2]))


def _arithmetic_obey(text, args, rng, others):
    last = list(NUMBER.finditer(text))
    if not last:
        return f"{text.rstrip()} {args['answer']}"
    m = last[-1]
    return text[:m.start()] + str(args["answer"]) + text[m.end():]


def _arithmetic_breach(text, args, rng, others):
    last = list(NUMBER.finditer(text))
    if not last:
        return None
    m = last[-1]
    wrong = args["answer"] + rng.choice([-10, -2, -1, 1, 2, 10])
    return text[:m.start()] + str(wrong) + text[m.end():]


def _fact_obey(text, args, rng, others):
    for wrong in ANSWERS:
        if wrong not in args["answers"] and has_word(text, wrong):
            return re.sub(rf"(?<![^\W_]){re.escape(wrong)}(?![^\W_])", args["answers"][0], text)
    return None


def _fact_breach(text, args, rng, others):
    wrong = rng.choice([a for a in ANSWERS if a not in args["answers"]])
    out = text
    for right in args["answers"]:
        out = re.sub(rf"(?<![^\W_]){re.escape(right)}(?![^\W_])", wrong, out, flags=re.IGNORECASE)
    return out


def _end_breach(text, args, rng, others):
    body = text.rstrip().rstrip("\"'”’*").rstrip()
    if not body.lower().endswith(args["phrase"].lower()):
        return None
    return body[: -len(args["phrase"])].rstrip() or None


def _start_obey(text, args, rng, others):
    stripped = text.lstrip()
    return f"{args['word']}, {stripped[:1].lower()}{stripped[1:]}" if stripped else None


def _start_breach(text, args, rng, others):
    found = list(WORD.finditer(text))
    if len(found) < 2:
        return None
    rest = text[found[1].start():]
    return rest[:1].upper() + rest[1:]


def _quote_breach(text, args, rng, others):
    body = text.strip()
    return body[1:-1].strip() if len(body) >= 2 and QUOTES.get(body[0]) == body[-1] else None


def _title_breach(text, args, rng, others):
    return TITLE.sub(lambda m: m.group(1), text)


def _postscript_breach(text, args, rng, others):
    kept = [line for line in text.splitlines() if not POSTSCRIPT.match(line)]
    return "\n".join(kept).strip() or None


def _comma_breach(text, args, rng, others):
    found = list(WORD.finditer(text))[1:-1]
    if not found:
        return None
    m = rng.choice(found)
    return text[:m.end()] + "," + text[m.end():]


EDITS: dict[str, tuple[Edit, Edit]] = {
    "lowercase": (lambda t, a, r, o: t.lower(), lambda t, a, r, o: _sentence_case(t)),
    "uppercase": (lambda t, a, r, o: t.upper(), lambda t, a, r, o: _sentence_case(t.lower())),
    "max_words": (lambda t, a, r, o: _cut(t, r.randint(max(1, a["n"] - 3), a["n"])),
                  lambda t, a, r, o: _longer(t, o, a["n"], r)),
    "min_words": (lambda t, a, r, o: _longer(t, o, a["n"] - 1, r),
                  lambda t, a, r, o: _cut(t, r.randint(max(1, a["n"] // 3), a["n"] - 1))),
    "include_keyword": (lambda t, a, r, o: _replace_word(t, r, a["word"]),
                        lambda t, a, r, o: _without_word(t, a["word"], r)),
    "avoid_keyword": (lambda t, a, r, o: _without_word(t, a["word"], r),
                      lambda t, a, r, o: _replace_word(t, r, a["word"])),
    "end_phrase": (lambda t, a, r, o: f"{t.rstrip()} {a['phrase']}", _end_breach),
    "start_word": (_start_obey, _start_breach),
    "no_commas": (lambda t, a, r, o: t.replace(",", "").replace("，", ""), _comma_breach),
    "bullets": (_bullets_obey, _bullets_breach),
    "json_keys": (_json_obey, _json_breach),
    "title": (lambda t, a, r, o: f"<<{' '.join(words(t)[:3]).title()}>>\n{t}", _title_breach),
    "quotation": (lambda t, a, r, o: f'"{t.strip().strip(chr(34))}"', _quote_breach),
    "postscript": (lambda t, a, r, o: f"{t.rstrip()}\n\n{r.choice(POSTSCRIPTS)}", _postscript_breach),
    "arithmetic": (_arithmetic_obey, _arithmetic_breach),
    "fact": (_fact_obey, _fact_breach),
}
assert set(EDITS) == set(CHECKS), "every checkable constraint has its edits"


def _passes(text: str | None, constraint: str, args: dict) -> bool | None:
    return None if text is None or not text.strip() else CHECKS[constraint](text, **args)


def edit_pair(text: str, constraint: str, args: dict, rng: random.Random, others: list[str]) -> tuple[str, str] | None:
    """(chosen, rejected) from one answer: the answer against its breach when it passes, its obeying edit
    against it when it fails; None when the edit does not apply or the verifier disagrees with it."""
    obey, breach = EDITS[constraint]
    passed = _passes(text, constraint, args)
    if passed is None:
        return None
    chosen, rejected = (text, breach(text, args, rng, others)) if passed else (obey(text, args, rng, others), text)
    if chosen == rejected or _passes(chosen, constraint, args) is not True or _passes(rejected, constraint, args) is not False:
        return None
    return chosen, rejected


def reworded(prompt: list[dict], constraint: str, args: dict, topic: str | None, rng: random.Random) -> list[dict]:
    """The prompt in one of its constraint's training wordings, drawn, when its last turn is one of the task
    set's wordings (else as it is): a pair seen under several phrasings teaches the constraint, not a phrasing.
    The arguments stay, so the verifier's labels hold."""
    c = CONSTRAINTS.get(constraint)
    if c is None or topic is None or not prompt:
        return prompt
    if prompt[-1]["content"] not in {c.prompt(w, topic, args) for w in range(len(c.wordings))}:
        return prompt
    w = rng.choice(wordings(constraint, len(c.wordings))["train"])
    return [*prompt[:-1], {**prompt[-1], "content": c.prompt(w, topic, args)}]


def edit_pairs(candidates, seed: int = 0) -> list[dict]:
    """One minimal pair per candidate that has a constraint: its columns (`prompt_id`, `prompt`, `text`,
    `constraint`, `constraint_args`, ...) plus `chosen`, `rejected` and `edit` ("breach" or "obey"), the
    prompt re-worded in a training wording of its constraint (`reworded`).

    `candidates` is a generate stage's table (a Dataset) or a list of its rows: the function
    `export.extra_pairs: rlaif.tasks:edit_pairs` names.
    """
    rows = candidates.to_list() if hasattr(candidates, "to_list") else list(candidates)
    by_prompt: dict[str, list[str]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt_id"], []).append(row["text"])
    out = []
    for k, row in enumerate(rows):
        constraint = row.get("constraint")
        if constraint not in EDITS or row.get("failure"):
            continue
        args = json.loads(row["constraint_args"]) if isinstance(row["constraint_args"], str) else row["constraint_args"]
        rng = random.Random(f"{seed}:{row['prompt_id']}:{k}")
        others = [t for t in by_prompt[row["prompt_id"]] if t != row["text"]]
        rng.shuffle(others)
        pair = edit_pair(row["text"], constraint, args, rng, others)
        if pair is not None:
            out.append({**row, "prompt": reworded(row["prompt"], constraint, args, row.get("topic"), rng),
                        "chosen": pair[0], "rejected": pair[1], "edit": "breach" if pair[0] == row["text"] else "obey"})
    return out
