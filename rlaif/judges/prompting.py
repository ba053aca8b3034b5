"""Judge templates: loading, the verdict tokens they declare, and unforgeable delimiters.

Candidates are untrusted text. A template quotes each one between lines that carry a tag; with
`delimiters: nonce` the tag is derived from the texts being quoted and chosen so that it occurs in
none of them, so no candidate can close its own quote and write outside it (it would have to
contain the tag, and the tag is picked to be absent). `fixed` uses a constant tag: the undefended
baseline that the injection suite measures against.
"""

from __future__ import annotations

import hashlib
import re

from rlaif.errors import ConfigError
from rlaif.templates import Template, load_template

FIXED_TAG = "RESPONSE"
_VERDICTS = re.compile(r"\{#-?\s*verdicts:\s*([^#]+?)\s*-?#\}")


def judge_template(name: str, field: str = "judge.template") -> Template:
    return load_template(name, "judge", field)


def declared_verdicts(template: Template) -> list[str] | None:
    """The `{#- verdicts: 1 2 -#}` line of a template, if it has one."""
    m = _VERDICTS.search(template.source)
    return m.group(1).split() if m else None


def verdict_tokens(template: Template, override: list[str] | None, default: list[str]) -> list[str]:
    tokens = override or declared_verdicts(template) or default
    if len(tokens) < 2 or len(set(tokens)) != len(tokens):
        raise ConfigError(f"field 'judge.verdict_tokens': need at least two distinct verdicts, got {tokens}")
    return tokens


def require_single_tokens(template: Template, verdicts: list[str], engine) -> None:
    """Refuse, when the judge is built, verdicts its model's tokenizer splits: log-prob judges read one token.

    Engines without a local tokenizer (a remote server) match the server's top log-probs by text instead.
    """
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None:
        return
    for verdict in verdicts:
        ids = tokenizer(verdict, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = " + ".join(repr(tokenizer.decode([i])) for i in ids)
            raise ConfigError(f"field 'judge.verdict_tokens': template {template.name!r} ({template.path}): verdict "
                              f"{verdict!r} is {len(ids)} tokens ({pieces}) for model {engine.model_id!r}; log-prob "
                              "verdicts must be single tokens of the judge model's vocabulary: declare other verdicts, "
                              "or use mode 'text'")


def delimiter_tag(texts: list[str], mode: str = "nonce") -> str:
    """A tag that occurs in none of `texts` (nonce mode), or the constant baseline tag."""
    if mode == "fixed":
        return FIXED_TAG
    seed = "\x00".join(texts).encode()
    for counter in range(1000):
        tag = "q" + hashlib.sha256(seed + str(counter).encode()).hexdigest()[:8]
        if not any(tag in t for t in texts):
            return tag
    raise ConfigError("could not find a delimiter tag absent from the texts")  # needs ~1000 crafted collisions


def render(template: Template, *, question: str, mode: str = "nonce", cot: bool = False, **responses) -> str:
    """The judge prompt for one question and its responses (`response` or `response_a`/`response_b`)."""
    texts = [question, *[v for v in responses.values() if isinstance(v, str)]]
    tag = delimiter_tag(texts, mode)
    return template.render(question=question, tag=tag, cot=cot, **responses).strip()
