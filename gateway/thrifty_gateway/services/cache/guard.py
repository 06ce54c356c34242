"""The wrong-hit guard: cheap lexical checks on a semantic candidate before it is served.

A similarity threshold alone matches "start the server" with "stop the server", 2014 with 2018
and Paris with Lyon: sentence embeddings place such pairs very close. Each check below is a
pure function of the two texts (the new final user turn and the cached one) and rejects the
candidate when the texts disagree on something that changes the answer:

* numbers: the numbers differ (digits, number words, ordinals, months, weekdays, clock times:
  "2pm" is "14:00"), or several come in another order ("divide 100 by 4"), or both texts name
  values of one unit, time or frequency group and not the same ones ("50 mg" / "50 mcg");
* negation: one text is negated and the other is not ("don't", "don’t" and "dont" alike; "lack",
  "barely", "refuse to" ...);
* antonyms: one text uses one side of an antonym pair or opposite class and the other text the
  other side, in any inflection (start/stopped, open/closed, more/fewer, all/some, did/will
  ...); a word against the same word with a negating prefix or ending (safe/unsafe,
  caffeinated/caffeine-free) or under opposite prefixes (overpay/underpay); or shared words
  swap sides around to/from/into/than/in ("USD to EUR" / "EUR to USD");
* entities: a named entity (capitalised or mixed-case token, acronym; not an instruction's
  first verb) of each text is absent from the other (a substitution), or the same words come
  in an order that trades two of them ("sarah owes mike" / "mike owes sarah"; moving one word,
  whole marker-led chunks, or the sides of and/or/vs keeps the meaning);
* length: one text is far longer than the other (it asks for more).

The word lists are in `guard_lexicon` (English only). Texts are compared after NFKC
normalisation (circled and full-width digits are digits) with typographic apostrophes made
plain, "7 a.m." as "7am", "w/o" as "without" and comparison operators as words. Every check
is measured in `bench/bench_semantic.py`.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from .guard_lexicon import (
    ANTONYM_PAIRS,
    CHUNK_MARKERS,
    COMMON_CAPITALISED,
    CONJUNCTIONS,
    INITIAL_VERBS,
    IRREGULAR,
    MONTH_CUES,
    MONTHS,
    NEGATING_BEFORE_TO,
    NEGATING_PREFIXES,
    NEGATING_SUFFIXES,
    NEGATIONS,
    NUMBER_PARTS,
    NUMBER_WORDS,
    OPPOSITE_BASE_MIN,
    OPPOSITE_CLASSES,
    OPPOSITE_PREFIXES,
    ORDER_IGNORED,
    PARTICLES,
    PREFIXED_BASE_MIN,
    PRONOUN_SUBJECTS,
    VALUE_GROUPS,
    WEEKDAYS,
)

# Words of any script (letters, inner apostrophes and hyphens), and numbers (a minus sign
# before one that follows no word: "-18", not "gpt-4").
_WORD = re.compile(
    r"[^\W\d_](?:[^\W\d_]|['\-])*[^\W\d_]|[^\W\d_]"
    r"|(?:(?<![\w.])-)?\d(?:[\d,.:/\-]*\d)?[^\W\d_]*"
)
# Letters after a number that make another number of it: "10k" / "10m". (Units of measure
# are compared as values: VALUE_GROUPS.)
NUMBER_UNITS = frozenset("k m b bn".split())
_CLOCK = re.compile(r"(\d{1,2})(?::(\d\d))?(am|pm)?")
# "7 am", "7 a.m." -> "7am"; operators -> words; "w/o" -> "without".
_REWRITES = (
    (re.compile(r"(\d)\s*([ap])\.?\s?m\b\.?", re.IGNORECASE), r"\1\2m"),
    (re.compile(r"\bw/o\b", re.IGNORECASE), " without "),
    (re.compile(r">="), " at least "),
    (re.compile(r"<="), " at most "),
    (re.compile(r"!="), " not equal "),
    (re.compile(r"=="), " equal "),
    (re.compile(r"(?<![-=])>"), " greater than "),
    (re.compile(r"<(?![-=])"), " less than "),
)
# Apostrophes as keyboards, phones and word processors type them.
_APOSTROPHES = str.maketrans(dict.fromkeys("\u2019\u2018\u02bc\u2032\u0060\u00b4", "'"))
_SENTENCE_END = re.compile(r"[.!?]\s+|\n")


@dataclass(frozen=True, slots=True)
class Features:
    """What the checks need from one text, computed once per text."""

    tokens: tuple[str, ...]
    lower: tuple[str, ...]
    numbers: tuple[str, ...]  # sorted
    number_order: tuple[str, ...]  # as they appear
    negated: bool
    entities: tuple[str, ...]  # lower-cased, in order of appearance
    values: frozenset[tuple[str, str]]  # (VALUE_GROUPS group, value)


def _number_of(token: str) -> str | None:
    low = token.lower()
    if low in NUMBER_WORDS:
        return NUMBER_WORDS[low]
    if low in MONTHS:
        return f"month:{MONTHS.index(low) + 1}"
    if low.rstrip("s") in WEEKDAYS:
        return f"weekday:{WEEKDAYS.index(low.rstrip('s')) + 1}"
    if "-" in low and low[0].isalpha():  # "twenty-five", "twenty-first"
        parts = [NUMBER_WORDS.get(p, NUMBER_PARTS.get(p)) for p in low.split("-")]
        if all(p is not None and p.isdigit() for p in parts):
            return str(sum(int(p) for p in parts if p is not None))
        return None
    sign = "-" if low.startswith("-") else ""
    low = low.lstrip("-")
    if not low[:1].isdigit():
        return None
    clock = _CLOCK.fullmatch(low)
    if clock and (clock.group(2) or clock.group(3)):  # "7pm", "19:00", "7:30pm" -> "19:30"
        hour, minute, half = int(clock.group(1)), clock.group(2) or "00", clock.group(3)
        hour = hour % 12 + (12 if half == "pm" else 0) if half else hour
        return f"{hour:02d}:{minute}"
    # "10k" keeps its unit; "1st" is 1, "1990s" 1990, "3x" 3; other letters ("2fa", "50mg",
    # "gpt-4o") are not part of the number.
    m = re.fullmatch(r"([\d,.:/\-]*\d)([^\W\d_]*)", low)
    if m is None:  # (a number token always matches; kept for the type checker)
        return sign + low
    number, unit = m.group(1).replace(",", ""), m.group(2)
    return sign + (number + unit if unit in NUMBER_UNITS else number)


def _values(lower: Sequence[str]) -> frozenset[tuple[str, str]]:
    """The (group, value) of each unit, time or size word, also one glued to a number
    ("50mg")."""
    out = set()
    for token in lower:
        word = re.sub(r"^-?[\d,.:/\-]+", "", token) if token[:1] in "-0123456789" else token
        for group, spellings in VALUE_GROUPS.items():
            if word in spellings:
                out.add((group, spellings[word]))
    return frozenset(out)


def _may_month(tokens: Sequence[str], i: int) -> bool:
    """Whether "may" at `i` is the month: capitalised inside the text, after a month cue, or
    next to a number ("May 3", "3 may")."""
    near = [tokens[j] for j in (i - 1, i + 1) if 0 <= j < len(tokens)]
    return (
        (tokens[i] == "May" and i > 0)
        or (i > 0 and tokens[i - 1].lower() in MONTH_CUES)
        or any(t[0].isdigit() for t in near)
    )


def _entity_tokens(text: str) -> list[str]:
    entities: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        words = _WORD.findall(sentence)
        for i, word in enumerate(words):
            if not word[0].isalpha():
                continue
            upper_inside = any(c.isupper() for c in word[1:])
            capital = word[0].isupper()
            if not (capital or upper_inside):
                continue
            low = word.lower()
            if low in COMMON_CAPITALISED or low in MONTHS or low in NUMBER_WORDS:
                continue
            if i == 0 and not upper_inside and low in INITIAL_VERBS:
                continue
            if i == 0 and not upper_inside and len(words) > 1 and low.endswith("ing"):
                continue
            entities.append(low)
    return entities


def normalised(text: str) -> str:
    """NFKC ("①" is "1", full-width letters are letters), apostrophes made plain, and the
    `_REWRITES`."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    for pattern, replacement in _REWRITES:
        text = pattern.sub(replacement, text)
    return text


@lru_cache(maxsize=4096)
def features(text: str) -> Features:
    """Tokenise once (cached: cached entries are compared again and again)."""
    text = normalised(text)
    tokens = tuple(_WORD.findall(text))
    lower = tuple(t.lower() for t in tokens)
    order = tuple(
        n
        for i, t in enumerate(tokens)
        if (n := _number_of(t)) is not None and (t.lower() != "may" or _may_month(tokens, i))
    )
    negated = any(t in NEGATIONS or t.endswith("n't") for t in lower) or any(
        t in NEGATING_BEFORE_TO and nxt == "to" for t, nxt in zip(lower, lower[1:], strict=False)
    )
    return Features(
        tokens=tokens,
        lower=lower,
        numbers=tuple(sorted(order)),
        number_order=order,
        negated=negated,
        entities=tuple(_entity_tokens(text)),
        values=_values(lower),
    )


def _numeric(order: Sequence[str]) -> list[str]:
    """The numbers proper, in order (a month or weekday may move: "December 25" / "25th of
    December")."""
    return [n for n in order if not n.startswith(("month:", "weekday:"))]


def numbers_match(a: Features, b: Features) -> bool:
    """The same numbers, in the same order when there are several ("divide 100 by 4" is not
    "divide 4 by 100"), and the same values of each unit, time or size group both name
    ("50 mg" / "50 mcg")."""
    if a.numbers != b.numbers or _numeric(a.number_order) != _numeric(b.number_order):
        return False
    groups = {g for g, _ in a.values} & {g for g, _ in b.values}
    return all(
        {v for v in a.values if v[0] == g} == {v for v in b.values if v[0] == g} for g in groups
    )


def negation_matches(a: Features, b: Features) -> bool:
    return a.negated == b.negated


def _inflections(word: str) -> set[str]:
    """The word with the regular English endings: -s, -es, -ed, -ing, -er, -est (a final e
    dropped, a final consonant after one vowel doubled, a final y after a consonant to i)."""
    if word in PARTICLES:
        return {word}
    stems = {word}
    if word.endswith("e"):
        stems.add(word[:-1])
    if re.fullmatch(r".*[^aeiou][aeiou][bdglmnprt]", word):
        stems.add(word + word[-1])
    if re.fullmatch(r".*[^aeiou]y", word):
        stems.add(word[:-1] + "i")
    out = {word, word + "s", word + "es", *IRREGULAR.get(word, ())}
    for stem in stems:
        out |= {stem + "ed", stem + "d", stem + "ing", stem + "er", stem + "est", stem + "es"}
    return out


@lru_cache(maxsize=1)
def _opposites() -> tuple[tuple[frozenset[str], frozenset[str]], ...]:
    """Every antonym pair and opposite class, each side with its inflected forms."""
    sides = [({x}, {y}) for x, y in ANTONYM_PAIRS] + [(set(x), set(y)) for x, y in OPPOSITE_CLASSES]
    return tuple(
        (frozenset().union(*map(_inflections, x)), frozenset().union(*map(_inflections, y)))
        for x, y in sides
    )


def _words_and_parts(f: Features) -> frozenset[str]:
    """The text's words, and the parts of its hyphenated ones ("long-term": long, term)."""
    return frozenset(f.lower) | {p for t in f.lower if "-" in t for p in t.split("-") if p}


def antonyms_match(a: Features, b: Features) -> bool:
    wa, wb = _words_and_parts(a), _words_and_parts(b)
    for x, y in _opposites():
        sa = (bool(x & wa), bool(y & wa))
        sb = (bool(x & wb), bool(y & wb))
        # A swap (one text says x and not y, the other y and not x), not a mere addition.
        if (sa == (True, False) and sb == (False, True)) or (
            sa == (False, True) and sb == (True, False)
        ):
            return False
    return (
        _prefix_matches(a, b)
        and _prefix_matches(b, a)
        and _suffix_matches(wa, wb)
        and _suffix_matches(wb, wa)
        and _opposite_prefixes_match(wa, wb)
        and _direction_matches(a, b)
    )


def _suffix_matches(wa: frozenset[str], wb: frozenset[str]) -> bool:
    """False when a word of `wa` is a word of `wb` with a negating ending that `wb` lacks:
    "caffeine-free" / "caffeinated", "wireless" / "wired"."""
    for word in wa - wb:
        for suffix in NEGATING_SUFFIXES:
            base = word[: -len(suffix)]
            if word.endswith(suffix) and len(base) >= PREFIXED_BASE_MIN:
                stem = base[:-1] if base.endswith("e") else base  # caffeine: caffeinated
                if any(w.startswith(stem) and not w.endswith(suffix) for w in wb - wa):
                    return False
    return True


def _opposite_prefixes_match(wa: frozenset[str], wb: frozenset[str]) -> bool:
    """False when one text's word and the other's are one word under opposite prefixes that
    the other text lacks: "overpay" / "underpay", "increment" / "decrement"."""
    only_a, only_b = wa - wb, wb - wa
    for p, q in OPPOSITE_PREFIXES:
        for first, second in ((p, q), (q, p)):
            for word in only_a:
                base = word[len(first) :].lstrip("-")
                if word.startswith(first) and len(base) >= OPPOSITE_BASE_MIN:
                    if any(
                        w.startswith(second) and w[len(second) :].lstrip("-") == base
                        for w in only_b
                    ):
                        return False
    return True


def _prefix_matches(a: Features, b: Features) -> bool:
    """False when a word of `a` is a word of `b` with a negating prefix that `b` lacks (and `a`
    lacks the plain word): "unsafe" against "safe", "invalid" against "valid"."""
    words_a, words_b = set(a.lower), set(b.lower)
    for word in words_a - words_b:
        for prefix in NEGATING_PREFIXES:
            base = word[len(prefix) :]
            if (
                word.startswith(prefix)
                and len(base) >= PREFIXED_BASE_MIN
                and base in words_b
                and base not in words_a
                and prefix.rstrip("-") not in words_b  # "non virgin" / "non-virgin"
            ):
                return False
    return True


DIRECTION_WINDOW = 2


def _direction_matches(a: Features, b: Features) -> bool:
    """Words next to to/from/into/than/in keep their side ("USD to EUR" vs "EUR to USD",
    "celsius in fahrenheit" vs "fahrenheit in celsius")."""
    for marker in ("to", "into", "from", "than", "in"):  # ("vs" is symmetric: "a vs b")
        if marker not in a.lower or marker not in b.lower:
            continue
        ia, ib = a.lower.index(marker), b.lower.index(marker)
        w = DIRECTION_WINDOW
        before_a, after_a = set(a.lower[max(0, ia - w) : ia]), set(a.lower[ia + 1 : ia + 1 + w])
        before_b, after_b = set(b.lower[max(0, ib - w) : ib]), set(b.lower[ib + 1 : ib + 1 + w])
        # (a word on both sides of the marker, "a dream in a dream", swaps nothing)
        content = {w for w in before_a ^ after_a if w not in COMMON_CAPITALISED and len(w) > 1}
        if (before_a & after_b & content) and (after_a & before_b & content):
            return False
    return True


def entities_match(a: Features, b: Features) -> bool:
    """A named entity replaced by another (each text has one the other lacks), or shared
    entities in another order. One text naming an extra entity is not a mismatch."""
    words_a, words_b = set(a.lower), set(b.lower)
    if any(e not in words_b for e in a.entities) and any(e not in words_a for e in b.entities):
        return False
    same_words, order_ok = _word_order(a, b)
    if same_words:  # the same words: their order decides, named or not
        return order_ok
    shared = [e for e in dict.fromkeys(a.entities) if e in b.entities]
    order_b = [e for e in dict.fromkeys(b.entities) if e in shared]
    return shared == order_b


def _order_words(f: Features) -> list[str]:
    return [PRONOUN_SUBJECTS.get(t, t) for t in f.lower if t not in ORDER_IGNORED]


def _chunks(words: Sequence[str]) -> Counter[tuple[str, ...]]:
    """The words cut before each of CHUNK_MARKERS ("from paris", "to london")."""
    out: Counter[tuple[str, ...]] = Counter()
    current: list[str] = []
    for word in words:
        if word in CHUNK_MARKERS and current:
            out[tuple(current)] += 1
            current = []
        current.append(word)
    out[tuple(current)] += 1
    return out


def _word_order(a: Features, b: Features) -> tuple[bool, bool]:
    """(the same words, in an order that keeps the meaning). Two words that trade places
    change who does what to whom ("sarah owes mike" / "mike owes sarah", "works locally but
    not in production" / the reverse), unless they sit around and/or/vs ("python and java") or
    whole chunks move with their marker ("from paris to london" / "to london from paris")."""
    wa, wb = _order_words(a), _order_words(b)
    if Counter(wa) != Counter(wb):
        return False, True
    if wa == wb:
        return True, True
    for i, word in enumerate(wa[1:-1], start=1):
        if word in CONJUNCTIONS:
            swapped = [*wa[: i - 1], wa[i + 1], word, wa[i - 1], *wa[i + 2 :]]
            if swapped == wb:
                return True, True
    # One word moved, the rest in order: "how are waves formed" / "how waves are formed",
    # "physically, how does it feel" / "how does it feel physically". (With the articles
    # kept, "every square a rectangle" / "every rectangle a square" is no such move.)
    for word in set(wa):
        if _without(wa, word) == _without(wb, word):
            return True, True
    chunks = _chunks(wa)
    return True, len(chunks) > 1 and chunks == _chunks(wb)


def _without(words: Sequence[str], word: str) -> list[str]:
    i = list(words).index(word)
    return [*words[:i], *words[i + 1 :]]


def length_matches(a: Features, b: Features, ratio: float = 3.0) -> bool:
    la, lb = len(a.tokens), len(b.tokens)
    short, long_ = min(la, lb), max(la, lb)
    return long_ <= 6 or long_ <= ratio * max(short, 1)


CHECKS: dict[str, Callable[[Features, Features], bool]] = {
    "numbers": numbers_match,
    "negation": negation_matches,
    "antonyms": antonyms_match,
    "entities": entities_match,
    "length": length_matches,
}


def first_failure(query: str, cached: str, checks: Iterable[str]) -> str | None:
    """The name of the first check the pair fails, or None when the candidate may be served."""
    a, b = features(query), features(cached)
    for name in checks:
        if not CHECKS[name](a, b):
            return name
    return None


def passes(query: str, cached: str, checks: Iterable[str] = tuple(CHECKS)) -> bool:
    return first_failure(query, cached, checks) is None
