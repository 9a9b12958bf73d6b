"""Text as a set of phrases (1-3 word n-grams), negation-aware: the vocabulary that the offline
explainer mines and the offline judge matches, so both read a text the same way.

    phrases_of(text) -> dict[phrase key, surface form]
    phrase_key(text) -> the key of one phrase as written in an explanation ("no pacemaker")
    marked_sentence(text) -> the sentence that holds a text example's marked token

A text is split into sentences; in each, NegEx-style triggers mark negated spans: a
pre-negation trigger ("no", "without", "negative for", ...) negates what follows it up to the
end of the sentence or a terminating word ("but", "however", ...); a post-negation trigger
("removed", "resolved", ...) negates what precedes it in the sentence. An n-gram lies wholly in
one span; a negated n-gram's key is prefixed "no " ("No pacemaker." -> "no pacemaker"), so
"No pacemaker." is never evidence for "pacemaker", and a feature of absent findings can still
be named. N-grams that begin or end with a stop word are left out. Words are lower-cased and a
plain plural "s" is dropped from the key ("effusions" -> "effusion"); the surface form keeps
the words as written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MAX_WORDS = 3
NEGATED = "no "

_SENTENCE = re.compile(r"[.;:!?\n]+")
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
_MARKS = re.compile(r"<<|>>")  # the marks around an example's token
_PRE_TRIGGERS = (
    ("no",),
    ("not",),
    ("without",),
    ("negative", "for"),
    ("free", "of"),
    ("absence", "of"),
    ("no", "evidence", "of"),
    ("rule", "out"),
)
_POST_TRIGGERS = frozenset({"removed", "resolved", "absent", "excluded"})
_TERMINATORS = frozenset({"but", "however", "although", "though", "except", "whereas", "yet"})
STOP_WORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "or",
        "are",
        "as",
        "at",
        "be",
        "been",
        "being",
        "by",
        "for",
        "from",
        "has",
        "have",
        "had",
        "he",
        "her",
        "his",
        "in",
        "into",
        "is",
        "it",
        "its",
        "of",
        "on",
        "she",
        "since",
        "so",
        "that",
        "the",
        "their",
        "there",
        "these",
        "this",
        "those",
        "to",
        "was",
        "were",
        "which",
        "with",
        "within",
        "will",
        "would",
        "can",
        "could",
        "may",
        "might",
        "also",
        "than",
        "then",
        "very",
        "seen",
    }
)


def phrases_of(text: str) -> dict[str, str]:
    """The phrase keys of ``text`` with the surface form each was first written in."""
    found: dict[str, str] = {}
    for sentence in _SENTENCE.split(_MARKS.sub("", text).lower()):
        words = _WORD.findall(sentence)
        for run, negated in _spans(words):
            for size in range(1, MAX_WORDS + 1):
                for start in range(len(run) - size + 1):
                    gram = run[start : start + size]
                    if _weak(gram[0]) or _weak(gram[-1]):
                        continue
                    key = (NEGATED if negated else "") + " ".join(_stem(w) for w in gram)
                    found.setdefault(key, (NEGATED if negated else "") + " ".join(gram))
    return found


def phrase_key(phrase: str) -> str:
    """The key of one phrase as an explanation writes it: "no pacemaker" is the negated
    "pacemaker", so it matches negated mentions only."""
    words = _WORD.findall(phrase.lower())
    negated = len(words) > 1 and words[0] == "no"
    return (NEGATED if negated else "") + " ".join(_stem(w) for w in words[negated:])


def marked_sentence(text: str) -> str:
    """The sentence of ``text`` around its ``<<token>>`` (all of ``text`` when unmarked): a
    text example's context window spans neighbouring sentences, which say other things."""
    start = text.find("<<")
    end = text.find(">>", start)
    if start < 0 or end < 0:
        return text
    before = _SENTENCE.split(text[:start])[-1]
    token = text[start : end + 2]
    after = "" if _SENTENCE.search(token) else _SENTENCE.split(text[end + 2 :])[0]
    return before + token + after


def _spans(words: Sequence[str]) -> list[tuple[list[str], bool]]:
    """The sentence's words in runs of one negation status, trigger words left out."""
    negated = [False] * len(words)
    is_trigger = [False] * len(words)
    index = 0
    while index < len(words):
        trigger = next((t for t in _PRE_TRIGGERS if _starts(words, index, t)), None)
        if trigger is not None:
            for offset in range(len(trigger)):
                is_trigger[index + offset] = True
            index += len(trigger)
            while index < len(words) and words[index] not in _TERMINATORS:
                negated[index] = True
                index += 1
            continue
        if words[index] in _POST_TRIGGERS:
            is_trigger[index] = True
            back = index - 1
            while back >= 0 and words[back] not in _TERMINATORS:
                negated[back] = True
                back -= 1
        index += 1
    runs: list[tuple[list[str], bool]] = []
    current: list[str] = []
    current_status = False
    for word, trigger, status in zip(words, is_trigger, negated, strict=True):
        boundary = trigger or word in _TERMINATORS
        if boundary or status != current_status:
            if current:
                runs.append((current, current_status))
            current, current_status = [], status
            if boundary:
                continue
        current.append(word)
    if current:
        runs.append((current, current_status))
    return runs


def _weak(word: str) -> bool:
    """A word no phrase begins or ends with: a stop word or a single character."""
    return len(word) < 2 or word in STOP_WORDS


def _starts(words: Sequence[str], index: int, trigger: tuple[str, ...]) -> bool:
    return tuple(words[index : index + len(trigger)]) == trigger


def _stem(word: str) -> str:
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word
