"""Checkable instructions: each constraint is a few wordings plus a plain-Python check.

A check reads only the response text and the constraint's arguments, so a judge, a GRPO reward
and the evaluation all get the same answer for the same response. The rules follow IFEval
(Zhou et al. 2023) where it is explicit, and are strict where it is silent:

- every check ignores leading and trailing whitespace; an answer with no words fails every check
  (an empty answer does not "avoid a keyword" or "use no commas");
- a word is a run of letters or digits, with inner apostrophes or hyphens (`don't`, `well-known`);
- keywords match whole words, case-insensitively, with a plain plural (`river`, `Rivers`);
- an end phrase matches case-insensitively, ignoring a closing quote or `*` after it;
- bullets are lines starting with `* `, `- ` or `• `; numbered lines are not bullets;
- JSON must be the whole answer, bare or inside one code fence, and an object holding every key.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
BULLET = re.compile(r"^\s*[*\-•]\s+\S", re.MULTILINE)
FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*)\n\s*```$", re.DOTALL)
TITLE = re.compile(r"<<([^<>\n]*\S[^<>\n]*)>>")
POSTSCRIPT = re.compile(r"^\s*p\.\s?s\.", re.MULTILINE | re.IGNORECASE)
QUOTES = {'"': '"', "“": "”"}


def words(text: str) -> list[str]:
    return WORD.findall(text)


def has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![^\W_]){re.escape(word)}(?:e?s)?(?![^\W_])", text, re.IGNORECASE) is not None


def lowercase(text: str) -> bool:
    return bool(words(text)) and text.islower()


def uppercase(text: str) -> bool:
    return bool(words(text)) and text.isupper()


def max_words(text: str, n: int) -> bool:
    return 1 <= len(words(text)) <= n


def min_words(text: str, n: int) -> bool:
    return len(words(text)) >= n


def include_keyword(text: str, word: str) -> bool:
    return has_word(text, word)


def avoid_keyword(text: str, word: str) -> bool:
    return bool(words(text)) and not has_word(text, word)


def end_phrase(text: str, phrase: str) -> bool:
    tail = text.strip().rstrip("\"'”’*").rstrip()
    return bool(words(text)) and tail.lower().endswith(phrase.lower())


def start_word(text: str, word: str) -> bool:
    found = words(text)
    return bool(found) and found[0].lower() == word.lower()


def no_commas(text: str) -> bool:
    return bool(words(text)) and "," not in text and "，" not in text


def bullets(text: str, n: int) -> bool:
    return len(BULLET.findall(text)) == n


def json_keys(text: str, keys: list[str]) -> bool:
    body = text.strip()
    fenced = FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return False
    return isinstance(value, dict) and all(k in value for k in keys)


def title(text: str) -> bool:
    return TITLE.search(text) is not None


def quotation(text: str) -> bool:
    body = text.strip()
    return len(body) >= 2 and QUOTES.get(body[0]) == body[-1] and bool(words(body))


def postscript(text: str) -> bool:
    return POSTSCRIPT.search(text) is not None


def arithmetic(text: str, answer: int) -> bool:
    """The last number in the answer is the result ("7 + 5 = 12" and "12" both pass)."""
    found = NUMBER.findall(text)
    return bool(found) and float(found[-1].replace(",", "")) == float(answer)


def fact(text: str, answers: list[str]) -> bool:
    """One of the accepted answers appears as a whole word or phrase, in any case."""
    return any(re.search(rf"(?<![^\W_]){re.escape(a)}(?![^\W_])", text, re.IGNORECASE) for a in answers)


# ---------------------------------------------------------------- constraint types: wordings + arguments

KEYWORDS = ["bright", "quiet", "morning", "friend", "golden", "journey", "simple", "gentle", "window", "dream",
            "green", "history", "music", "little", "home", "secret", "future", "warm", "story", "wonder"]
END_PHRASES = ["Any other questions?", "That is all.", "Thank you for reading.", "The end.",
               "Have a nice day."]
START_WORDS = ["Yes", "Today", "Imagine", "Indeed", "Once"]
JSON_KEYS = [["name", "color"], ["title", "summary"], ["topic", "fact"], ["place", "reason"], ["item", "price"],
             ["animal", "sound"]]


@dataclass(frozen=True)
class Constraint:
    """One instruction type: `wordings` are `str.format` templates over `topic` and the arguments."""

    name: str
    check: Callable[..., bool]
    wordings: tuple[str, ...]
    arguments: Callable[[random.Random, dict], dict] = field(default=lambda rng, topic: {})

    def prompt(self, wording: int, topic: str, args: dict) -> str:
        return self.wordings[wording].format(topic=topic, **{k: _spoken(v) for k, v in args.items()})


def _spoken(value):
    """Arguments as they read in a prompt: a list of keys becomes `"a" and "b"`."""
    return " and ".join(f'"{v}"' for v in value) if isinstance(value, list) else value


CONSTRAINTS = {c.name: c for c in [
    Constraint("lowercase", lowercase, (
        "Write one sentence about {topic} in all lowercase letters.",
        "Describe {topic} in one sentence, using only lowercase letters.",
        "In one sentence about {topic}, do not use any capital letters.",
        "Tell me about {topic} in one short sentence. Use lowercase letters only.",
        "Write a short sentence about {topic}, all in lowercase.")),
    Constraint("uppercase", uppercase, (
        "Write one sentence about {topic} in all capital letters.",
        "Describe {topic} in one sentence, using only uppercase letters.",
        "Tell me about {topic} in one short sentence. Write it all in capitals.",
        "Write a short sentence about {topic}, in uppercase only.",
        "In one sentence about {topic}, use no lowercase letters.")),
    Constraint("max_words", max_words, (
        "Describe {topic} in at most {n} words.",
        "Tell me about {topic} in {n} words or fewer.",
        "Write about {topic}. Use no more than {n} words.",
        "In {n} words or less, describe {topic}.",
        "Say something about {topic} using at most {n} words."),
        lambda rng, topic: {"n": rng.choice([5, 8, 10, 12, 15])}),
    Constraint("min_words", min_words, (
        "Write at least {n} words about {topic}.",
        "Describe {topic} in {n} words or more.",
        "Tell me about {topic}. Use at least {n} words.",
        "Write a paragraph of no fewer than {n} words about {topic}.",
        "Explain {topic} in a text of at least {n} words."),
        lambda rng, topic: {"n": rng.choice([15, 20, 25, 30])}),
    Constraint("include_keyword", include_keyword, (
        'Write a sentence about {topic} that uses the word "{word}".',
        'Describe {topic} in one sentence. Include the word "{word}".',
        'Tell me about {topic} and use the word "{word}" in your answer.',
        'Write one sentence about {topic} containing the word "{word}".',
        'Mention the word "{word}" in a short sentence about {topic}.'),
        lambda rng, topic: {"word": rng.choice(KEYWORDS)}),
    Constraint("avoid_keyword", avoid_keyword, (
        'Write a sentence about {topic} without using the word "{word}".',
        'Describe {topic} in one sentence. Do not use the word "{word}".',
        'Tell me about {topic}, but never say "{word}".',
        'Write one sentence about {topic} that does not contain the word "{word}".',
        'Avoid the word "{word}" and write a short sentence about {topic}.'),
        lambda rng, topic: {"word": rng.choice(topic["words"])}),
    Constraint("end_phrase", end_phrase, (
        'Write a short sentence about {topic} and end your reply with "{phrase}"',
        'Describe {topic} briefly. Finish your answer with the exact phrase "{phrase}"',
        'Tell me about {topic} in one sentence, then end with "{phrase}"',
        'Write two sentences about {topic}. The last words must be "{phrase}"',
        'Say something about {topic}, ending your response with "{phrase}"'),
        lambda rng, topic: {"phrase": rng.choice(END_PHRASES)}),
    Constraint("start_word", start_word, (
        'Write a sentence about {topic} that starts with the word "{word}".',
        'Describe {topic} in one sentence. Begin your answer with "{word}".',
        'Tell me about {topic}. The first word of your reply must be "{word}".',
        'Start with the word "{word}" and write one sentence about {topic}.',
        'Write a short sentence about {topic}, beginning with "{word}".'),
        lambda rng, topic: {"word": rng.choice(START_WORDS)}),
    Constraint("no_commas", no_commas, (
        "Write two sentences about {topic} without using any commas.",
        "Describe {topic} in two sentences. Do not use commas.",
        "Tell me about {topic}. Your answer must contain no commas.",
        "Write a short text about {topic} with no commas at all.",
        "Without a single comma, describe {topic} in two sentences.")),
    Constraint("bullets", bullets, (
        "List exactly {n} facts about {topic} as bullet points starting with *.",
        "Give {n} bullet points about {topic}, no more and no fewer. Start each with *.",
        "Write exactly {n} bullet points (using *) about {topic}.",
        "Describe {topic} in exactly {n} bullet points. Use * for each bullet.",
        "Make a list of {n} points about {topic}, each a bullet beginning with *."),
        lambda rng, topic: {"n": rng.choice([2, 3, 4, 5])}),
    Constraint("json_keys", json_keys, (
        "Describe {topic} as a JSON object with the keys {keys}.",
        "Answer in JSON only: an object about {topic} with keys {keys}.",
        "Write a JSON object about {topic}. It must have the keys {keys}.",
        "Give me valid JSON about {topic} with the fields {keys}.",
        "Return only a JSON object describing {topic}, with keys {keys}."),
        lambda rng, topic: {"keys": rng.choice(JSON_KEYS)}),
    Constraint("title", title, (
        "Write a short poem about {topic} with a title in double angular brackets, like <<title>>.",
        "Write two sentences about {topic}. Give them a title wrapped in << and >>.",
        "Describe {topic} briefly and start with a title written as <<your title>>.",
        "Write a short note about {topic}. Include a title in the form <<title>>.",
        "Give a title in double angle brackets, such as <<my title>>, then one sentence about {topic}.")),
    Constraint("quotation", quotation, (
        "Write one sentence about {topic} and wrap your whole answer in double quotation marks.",
        "Describe {topic} in one sentence. Put the entire reply inside double quotes.",
        'Tell me about {topic} in one sentence, enclosed in double quotation marks ("...").',
        "Write a short sentence about {topic}. Your whole answer must be in quotation marks.",
        "Wrap your entire response in double quotes and describe {topic} in one sentence.")),
    Constraint("postscript", postscript, (
        "Write a short note about {topic}. At the end, add a postscript starting with P.S.",
        "Describe {topic} in two sentences, then add a line that begins with P.S.",
        "Tell me about {topic} and finish with a postscript (P.S.).",
        "Write one sentence about {topic}. End with a P.S. on its own line.",
        "Write a short message about {topic} and include a postscript beginning with P.S.")),
]}
