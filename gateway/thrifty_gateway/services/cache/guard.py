"""The wrong-hit guard: cheap lexical checks on a semantic candidate before it is served.

A similarity threshold alone matches "start the server" with "stop the server", 2014 with 2018
and Paris with Lyon: sentence embeddings place such pairs very close. Each check below is a
pure function of the two texts (the new final user turn and the cached one) and rejects the
candidate when the texts disagree on something that changes the answer:

* numbers: the numbers differ (digits, number words, ordinals, months, weekdays, clock times:
  "2pm" is "14:00"), or several come in another order ("divide 100 by 4"), or both texts name
  values of one unit, time, rate or frequency group and not the same ones ("50 mg" / "50
  mcg", "Mbps" / "MBps", "every day" / "every other day");
* negation: one text is negated and the other is not ("don't", "don’t" and "dont" alike; "lack",
  "barely", "refuse to" ...);
* antonyms: one text uses one side of an antonym pair or opposite class and the other text the
  other side, in any inflection (start/stopped, open/closed, more/fewer, all/some, did/will
  ...); a word against the same word with a negating prefix or ending (safe/unsafe,
  caffeinated/caffeine-free) or under opposite prefixes (overpay/underpay); or shared words
  swap sides around to/from/into/than/in ("USD to EUR" / "EUR to USD");
* entities: a named entity (capitalised or mixed-case token, acronym; not an instruction's
  first verb) of each text is absent from the other (a substitution), a subject pronoun stands
  for its object form ("can my employer fire me" / "can I fire ...", "does my landlord owe
  me" / "do I owe my landlord"), or the same words come in an order that trades two of them
  ("sarah owes mike" / "mike owes sarah", "chocolate milk" / "milk chocolate"; moving one
  word, whole marker-led chunks, or the sides of and/or/vs keeps the meaning);
* length: one text is far longer than the other (it asks for more).

The word lists are in `guard_lexicon` (English only). Texts are compared after NFKC
normalisation (circled and full-width digits are digits) with typographic apostrophes made
plain, "7 a.m." as "7am", "w/o" as "without", "every other day" as "every 2 days", "MB/s"
as megabytes per second and comparison operators as words. Every check
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
    AUXILIARY_FORMS,
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
    NEGATION_UNLESS_NEXT,
    NEGATIONS,
    NUMBER_PARTS,
    NUMBER_WORDS,
    OPPOSITE_BASE_MIN,
    OPPOSITE_CLASSES,
    OPPOSITE_PREFIXES,
    ORDER_IGNORED,
    ORDER_SLACK,
    PARTICLES,
    PREFIXED_BASE_MIN,
    PRONOUN_ROLES,
    SET_PHRASES,
    VALUE_GROUPS,
    WEEKDAYS,
)

# Words of any script (letters, inner apostrophes and hyphens), and numbers (a minus sign
# before one that follows no word, and no number before a space: "-18", not "gpt-4" nor
# "10 -3").
_WORD = re.compile(
    r"[^\W\d_](?:[^\W\d_]|['\-])*[^\W\d_]|[^\W\d_]"
    r"|(?:(?<![\w.)\]])(?<![\d)\]] )-)?\d(?:[\d,.:/\-]*\d)?[^\W\d_]*"
)
# Letters after a number that make another number of it: "10k" / "10m". (Units of measure
# are compared as values: VALUE_GROUPS.)
NUMBER_UNITS = frozenset("k m b bn".split())
_CLOCK = re.compile(r"(\d{1,2})(?:[:.](\d\d))?(am|pm)?")
_SCALE = {"k": "kilo", "K": "kilo", "M": "mega", "G": "giga", "T": "tera"}
# "7 am", "7 a.m." -> "7am"; operators -> words; "w/o" -> "without"; "every other day" ->
# "every 2 days"; "MBps" / "MB/s" (bytes, by their case) -> "megabytes-per-second", "Mb/s" ->
# "Mbps" (bits).
_REWRITES: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"(\d)\s*([ap])\.?\s?m\b\.?", re.IGNORECASE), r"\1\2m"),
    (
        re.compile(
            r"\b(?:every other|(?:on )?alternate) (day|week|month|year|hour|night|morning"
            r"|evening|weekend|monday|tuesday|wednesday|thursday|friday|saturday|sunday)s?\b",
            re.IGNORECASE,
        ),
        r"every 2 \1s",
    ),
    (
        re.compile(r"(?<![^\W\d_])([kKMGT])B(?:ps|/s)(?![^\W\d_])"),
        lambda m: f" {_SCALE[m.group(1)]}bytes-per-second",
    ),
    (re.compile(r"(?<![^\W\d_])([kKMGT])b/s(?![^\W\d_])"), r"\1bps"),
    (re.compile(r"\bw/o\b", re.IGNORECASE), " without "),
    (re.compile(r">=|\u2265"), " at least "),
    (re.compile(r"<=|\u2264"), " at most "),
    (re.compile(r"!=|\u2260"), " not equal "),
    (re.compile(r"[\u2212\u2013](?=\d)"), "-"),  # minus sign, en dash before a number
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
    parts: frozenset[str]  # words and their hyphen parts, for the antonym checks
    direction: tuple[str, ...]  # words as the direction check compares them
    order: tuple[str, ...]  # words as the word-order checks compare them
    sides: frozenset[tuple[int, int]]  # (opposite pair, its side 0 or 1) the parts name


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
    if low in NUMBER_PARTS:  # ("one" only counts beside other numbers: `features`)
        return NUMBER_PARTS[low]
    sign = "-" if low.startswith("-") else ""
    low = low.lstrip("-")
    if not low[:1].isdigit():
        return None
    clock = _CLOCK.fullmatch(low)
    # "7pm", "19:00", "7:30pm" -> "19:30"; "7.30pm" is a time, "3.11" a version
    if clock and (clock.group(2) or clock.group(3)) and ("." not in low or clock.group(3)):
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


@lru_cache(maxsize=1)
def _value_of() -> dict[str, tuple[str, str]]:
    """Each spelling of VALUE_GROUPS -> (its group, its value)."""
    return {w: (g, v) for g, spellings in VALUE_GROUPS.items() for w, v in spellings.items()}


def _values(lower: Sequence[str]) -> frozenset[tuple[str, str]]:
    """The (group, value) of each unit, time or frequency word, also one glued to a number
    ("50mg")."""
    value_of = _value_of()
    words = (re.sub(r"^-?[\d,.:/\-]+", "", t) if t[:1] in "-0123456789" else t for t in lower)
    return frozenset(value_of[w] for w in words if w in value_of)


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
    if all(n == "1" for n in order):
        # "one" and "1" alone are "a": "which one is better", "give me 1 reason" / "give me a
        # reason". Beside other numbers they count ("2 adults and 1 child").
        order = ()
    nexts = [*lower[1:], ""]
    negated = any(
        (t in NEGATIONS or t.endswith("n't")) and NEGATION_UNLESS_NEXT.get(t) != nxt
        for t, nxt in zip(lower, nexts, strict=True)
    ) or any(t in NEGATING_BEFORE_TO and nxt == "to" for t, nxt in zip(lower, nexts, strict=True))
    parts = _words_and_parts(lower)
    return Features(
        tokens=tokens,
        lower=lower,
        numbers=tuple(sorted(order)),
        number_order=order,
        negated=negated,
        entities=tuple(_entity_tokens(text)),
        values=_values(lower),
        parts=parts,
        direction=_direction_words(lower),
        order=tuple(t for t in lower if t not in ORDER_IGNORED),
        sides=_sides(parts),
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
    sides = [({x}, {y}, True) for x, y in ANTONYM_PAIRS] + [
        (set(x), set(y), inflect) for x, y, inflect in OPPOSITE_CLASSES
    ]
    return tuple(
        (
            frozenset().union(*map(_inflections, x)) if inflect else frozenset(x),
            frozenset().union(*map(_inflections, y)) if inflect else frozenset(y),
        )
        for x, y, inflect in sides
    )


@lru_cache(maxsize=1)
def _side_index() -> dict[str, tuple[tuple[int, int], ...]]:
    """Each word of `_opposites` -> the (pair, side) it names."""
    index: dict[str, list[tuple[int, int]]] = {}
    for i, pair in enumerate(_opposites()):
        for side, words in enumerate(pair):
            for word in words:
                index.setdefault(word, []).append((i, side))
    return {word: tuple(sides) for word, sides in index.items()}


def _sides(parts: frozenset[str]) -> frozenset[tuple[int, int]]:
    index = _side_index()
    return frozenset(side for word in parts for side in index.get(word, ()))


def _words_and_parts(lower: Sequence[str]) -> frozenset[str]:
    """The text's words, and the parts of its hyphenated ones ("long-term": long, term)."""
    words = frozenset(lower) | {p for t in lower if "-" in t for p in t.split("-") if p}
    pairs = set(zip(lower, lower[1:], strict=False))
    return words - {w for phrase in SET_PHRASES if phrase in pairs for w in phrase}


def antonyms_match(a: Features, b: Features) -> bool:
    wa, wb = a.parts, b.parts
    # A swap (one text names one side of a pair and not the other, the other text the other
    # side only), not a mere addition. (Read through each text's `sides`: a loop over every
    # pair took about 200 set intersections per candidate.)
    for i, side in a.sides - b.sides:
        other = 1 - side
        if (i, other) not in a.sides and (i, other) in b.sides:
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
        for tail in ("ly", "ness"):  # "wirelessly", "homelessness"
            if word.endswith(("less" + tail, "free" + tail)):
                word = word[: -len(tail)]
        for suffix in NEGATING_SUFFIXES:
            base = word[: -len(suffix)]
            if not word.endswith(suffix) or len(base) < PREFIXED_BASE_MIN:
                continue
            # the base word in another form: "wired", "caffeinated"
            forms = _inflections(base) | {base.removesuffix("e") + "ated"}
            if any(w in forms for w in wb - wa) and not any(
                w.startswith(base) and w.endswith(suffix) for w in wb
            ):
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


def _direction_words(lower: Sequence[str]) -> tuple[str, ...]:
    """The words, units as their value and plurals as the singular ("inches": length:in,
    "cats": cat), so that a swap is seen whichever way either side is written."""
    value_of = _value_of()
    out = []
    for word in lower:
        word = ":".join(value_of[word]) if word in value_of else word
        out.append(word[:-1] if len(word) > 3 and word.endswith("s") else word)
    return tuple(out)


def _direction_matches(a: Features, b: Features) -> bool:
    """Words next to to/from/into/than/in keep their side ("USD to EUR" vs "EUR to USD",
    "celsius in fahrenheit" vs "fahrenheit in celsius"), at every place the marker appears."""
    wa, wb = a.direction, b.direction
    w = DIRECTION_WINDOW
    for marker in ("to", "into", "from", "than", "in"):  # ("vs" is symmetric: "a vs b")
        for ia in (i for i, x in enumerate(wa) if x == marker):
            before_a, after_a = set(wa[max(0, ia - w) : ia]), set(wa[ia + 1 : ia + 1 + w])
            for ib in (i for i, x in enumerate(wb) if x == marker):
                before_b, after_b = set(wb[max(0, ib - w) : ib]), set(wb[ib + 1 : ib + 1 + w])
                # (a word on both sides of the marker, "a dream in a dream", swaps nothing)
                content = {
                    x
                    for x in (before_a ^ after_a) & (before_b ^ after_b)
                    if x not in COMMON_CAPITALISED and len(x) > 1
                }
                if (before_a & after_b & content) and (after_a & before_b & content):
                    return False
    return True


def entities_match(a: Features, b: Features) -> bool:
    """A named entity replaced by another (each text has one the other lacks), or shared
    entities in another order. One text naming an extra entity is not a mismatch."""
    words_a, words_b = set(a.lower), set(b.lower)
    if any(e not in words_b for e in a.entities) and any(e not in words_a for e in b.entities):
        return False
    if _roles_swapped(a, b):
        return False
    same_words, order_ok = _word_order(a, b)
    if same_words:  # the same words: their order decides, named or not
        return order_ok
    in_b = set(b.entities)
    shared = [e for e in dict.fromkeys(a.entities) if e in in_b]
    in_shared = set(shared)
    order_b = [e for e in dict.fromkeys(b.entities) if e in in_shared]
    if shared != order_b and set(shared) == set(a.entities) == set(b.entities):
        # The same entities on both sides, joined by and/or/vs in both ("TCP and UDP" / "UDP
        # and TCP"): an order that keeps the meaning. (A swap around to/from/than is the
        # direction check's.)
        return bool(CONJUNCTIONS & words_a and CONJUNCTIONS & words_b)
    return shared == order_b


def _roles_swapped(a: Features, b: Features) -> bool:
    """The texts differ only by a subject pronoun in one against its object form in the
    other ("can my employer fire me" / "can I fire my employer"), and perhaps by the form of
    an auxiliary that agrees with the new subject ("does my landlord owe me" / "do I owe my
    landlord")."""
    ca, cb = Counter(a.order), Counter(b.order)
    only_a, only_b = ca - cb, cb - ca
    swapped = False
    for x, y in PRONOUN_ROLES:  # ("is he taller than me" / "am I taller than him": two)
        for p, q in ((x, y), (y, x)):
            if only_a[p] == 1 and only_b[q] == 1:
                only_a, only_b, swapped = only_a - Counter([p]), only_b - Counter([q]), True
    if not swapped or only_a.total() > 1 or only_b.total() > 1:
        return False
    if not all(w in AUXILIARY_FORMS for w in (*only_a, *only_b)):
        return False
    return {AUXILIARY_FORMS[w] for w in only_a} == {AUXILIARY_FORMS[w] for w in only_b}


def _conjuncts_swapped(wa: Sequence[str], wb: Sequence[str], i: int, j: int) -> bool:
    """The texts differ by "x and/or/vs y" against "y and/or/vs x" ("rice or pasta", "a dragon
    and a knight"), with `i` / `j` the lengths of their common start and end (the span
    widened by up to two words each way, where an article or a shared word may sit)."""
    for lo in range(max(0, i - 2), i + 1):
        for hi in range(max(0, j - 2), j + 1):
            ma, mb = list(wa[lo : len(wa) - hi]), list(wb[lo : len(wb) - hi])
            for k, word in enumerate(ma):
                if word in CONJUNCTIONS and mb == [*ma[k + 1 :], word, *ma[:k]]:
                    return True
    return False


def _kept(words: Sequence[str], budget: Counter[str]) -> list[str]:
    """`words` in order, each kept as many times as `budget` allows."""
    left = Counter(budget)
    out = []
    for word in words:
        if left[word] > 0:
            left[word] -= 1
            out.append(word)
    return out


def _content_word(word: str) -> bool:
    """A word that carries the meaning (not a function word, an adverb or a number)."""
    return (
        word.isalpha()
        and word not in COMMON_CAPITALISED
        and word not in CHUNK_MARKERS
        and word not in CONJUNCTIONS
        and not word.endswith("ly")
    )


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
    not in production" / the reverse), unless they sit around and/or/vs ("python and java"),
    one word moved ("how are waves formed" / "how waves are formed"), or whole chunks move with
    their marker ("from paris to london" / "to london from paris"). Linear in the length: the
    texts are compared on the span where they differ."""
    wa, wb = list(a.order), list(b.order)
    ca, cb = Counter(wa), Counter(wb)
    if ca != cb:
        # One word more or less on either side ("does mike owe sarah any money"): the words
        # both have are compared.
        if (ca - cb).total() + (cb - ca).total() > ORDER_SLACK:
            return False, True
        both = ca & cb
        wa = _kept(wa, both)
        wb = _kept(wb, both)
    if wa == wb:
        return True, True
    i = 0
    while wa[i] == wb[i]:
        i += 1
    j = 0
    while wa[-1 - j] == wb[-1 - j]:
        j += 1
    ma, mb = wa[i : len(wa) - j], wb[i : len(wb) - j]
    if _conjuncts_swapped(wa, wb, i, j):
        return True, True
    if ca == cb and len(ma) == 2 and all(_content_word(w) for w in ma):
        # two content words trade places, nothing else changes: "chocolate milk" / "milk
        # chocolate" (a paraphrase that reorders a compound rewords it: "USA election" /
        # "election of USA")
        return True, False
    # one word moved: the differing span is the other's rotated by one
    if (ma[1:] == mb[:-1] and ma[0] == mb[-1]) or (ma[:-1] == mb[1:] and ma[-1] == mb[0]):
        return True, True
    chunks = _chunks(wa)
    return True, len(chunks) > 1 and chunks == _chunks(wb)


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
