"""The wrong-hit guard: cheap lexical checks on a semantic candidate before it is served.

A similarity threshold alone matches "start the server" with "stop the server", 2014 with 2018
and Paris with Lyon: sentence embeddings place such pairs very close. Each check below is a
pure function of the two texts (the new final user turn and the cached one) and rejects the
candidate when the texts disagree on something that changes the answer:

* numbers: the multisets of numbers (digits, number words, ordinals, dates) differ;
* negation: one text is negated and the other is not ("don't", "don’t" and "dont" alike);
* antonyms: one text uses one member of an antonym / direction pair and the other text the
  other member, in any inflection (start/stopped, open/closed, longest/shortest ...), one
  text has a word the other has with a negating prefix (safe/unsafe, valid/invalid), or
  shared words swap sides around to/from/into/vs ("USD to EUR" / "EUR to USD");
* entities: a named entity (capitalised or mixed-case token, acronym) of each text is absent
  from the other (a substitution), or shared entities appear in a different order;
* length: one text is far longer than the other (it asks for more).

Texts are compared after NFKC normalisation (circled and full-width digits are digits) with
typographic apostrophes made plain. Every check is measured in `bench/bench_semantic.py`.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

# Words of any script (letters, inner apostrophes and hyphens), and numbers.
_WORD = re.compile(r"[^\W\d_](?:[^\W\d_]|['\-])*[^\W\d_]|[^\W\d_]|\d(?:[\d,.:/\-]*\d)?[^\W\d_]*")
# Letters after a number that make another number of it: "7am" / "7pm", "10k" / "10m".
NUMBER_UNITS = frozenset("k m b bn gb mb kb tb am pm".split())
# Apostrophes as keyboards, phones and word processors type them.
_APOSTROPHES = str.maketrans(dict.fromkeys("\u2019\u2018\u02bc\u2032\u0060\u00b4", "'"))
_SENTENCE_END = re.compile(r"[.!?]\s+|\n")

NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40",
    "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
    "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
    "first": "1", "second": "2", "third": "3", "fourth": "4", "fifth": "5", "sixth": "6",
    "seventh": "7", "eighth": "8", "ninth": "9", "tenth": "10", "twice": "2", "half": "0.5",
    "dozen": "12", "single": "1", "double": "2", "triple": "3",
}  # fmt: skip

MONTHS = (
    "january february march april may june july august september october november december"
).split()
WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()

_CONTRACTIONS = (
    "can't won't don't doesn't didn't isn't aren't wasn't weren't shouldn't wouldn't couldn't "
    "haven't hasn't hadn't mustn't needn't ain't"
).split()
NEGATIONS = frozenset(
    "not no never none nobody nothing neither nor without cannot nowhere unable".split()
    + _CONTRACTIONS
    + [c.replace("'", "") for c in _CONTRACTIONS]  # typed without the apostrophe: "dont"
)
# A word with one of these in front, against the same word without it: safe / unsafe.
NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "de", "non", "non-", "anti")
PREFIXED_BASE_MIN = 4  # letters of the base word: "unit" is no negated "it"

ANTONYM_PAIRS: tuple[tuple[str, str], ...] = tuple(
    tuple(p.split("/"))  # type: ignore[misc]
    for p in (
        "start/stop start/end begin/end open/close enable/disable on/off up/down in/out "
        "increase/decrease rise/fall raise/lower gain/lose win/lose buy/sell import/export "
        "upload/download push/pull add/remove insert/delete encrypt/decrypt encode/decode "
        "compress/decompress connect/disconnect lock/unlock install/uninstall include/exclude "
        "accept/reject allow/deny before/after above/below over/under inside/outside "
        "max/min maximum/minimum most/least more/less higher/lower high/low big/small "
        "large/small long/short fast/slow hot/cold warm/cool best/worst better/worse good/bad "
        "first/last true/false positive/negative pros/cons advantage/disadvantage "
        "cheap/expensive cheapest/expensive strong/weak easy/hard easy/difficult "
        "left/right north/south east/west male/female men/women boy/girl love/hate "
        "like/dislike happy/sad rich/poor old/new old/young past/future yesterday/tomorrow "
        "morning/evening day/night summer/winter light/dark black/white early/late "
        "import/export send/receive give/take lend/borrow teach/learn buy/rent "
        "inhale/exhale internal/external input/output client/server read/write get/set "
        "success/failure succeed/fail pass/fail legal/illegal possible/impossible safe/dangerous "
        "true/fake real/fake friend/enemy agree/disagree same/different similar/different "
        "ascending/descending asc/desc synchronous/asynchronous "
        "sync/async public/private import/export mean/median "
        "arrive/depart arrival/departure accept/decline approve/deny approve/reject hire/fire "
        "freeze/thaw freezing/boiling husband/wife king/queen mother/father son/daughter "
        "brother/sister deposit/withdraw debit/credit income/expense profit/loss "
        "sunrise/sunset inbound/outbound incoming/outgoing upstream/downstream "
        "uppercase/lowercase horizontal/vertical prefix/suffix header/footer top/bottom "
        "front/back forward/backward ascend/descend expand/collapse show/hide join/leave "
        "enter/exit login/logout attach/detach merge/split "
        # units: one asked for in place of the other changes the answer
        "celsius/fahrenheit km/mile kilometer/mile kilometre/mile kg/lb kg/pound kilo/pound "
        "kilogram/pound meter/foot metre/foot meter/feet metre/feet cm/inch centimeter/inch "
        "liter/gallon litre/gallon dollar/euro hour/minute day/week week/month month/year"
    ).split()
)

COMMON_CAPITALISED = frozenset(
    "i a an the what what's whats how how's why when where who whom whose which is are was "
    "were can could should would will do does did have has had may might must shall if in "
    "on at for to of and or but so as my your our their his her its it it's this that these "
    "those there here please tell give explain write describe list make create find show "
    "help let i'm i've i'd i'll hi hello hey thanks thank yes no not any some all each every "
    "best most why's where's who's after before with without from by about into be been "
    "being am also then than just only very really now today yesterday tomorrow".split()
)


@dataclass(frozen=True, slots=True)
class Features:
    """What the checks need from one text, computed once per text."""

    tokens: tuple[str, ...]
    lower: tuple[str, ...]
    numbers: tuple[str, ...]
    negated: bool
    entities: tuple[str, ...]  # lower-cased, in order of appearance


def _number_of(token: str) -> str | None:
    low = token.lower()
    if low in NUMBER_WORDS:
        return NUMBER_WORDS[low]
    if low in MONTHS:
        return f"month:{MONTHS.index(low) + 1}"
    if low.rstrip("s") in WEEKDAYS:
        return f"weekday:{WEEKDAYS.index(low.rstrip('s')) + 1}"
    if not token[0].isdigit():
        return None
    # "7pm", "10k", "5gb" keep their unit; "1st" is 1, "1990s" 1990, "3x" 3; other letters
    # ("2fa", "gpt-4o") are not part of the number.
    m = re.fullmatch(r"([\d,.:/\-]*\d)([^\W\d_]*)", low)
    if m is None:  # (a number token always matches; kept for the type checker)
        return low
    number, unit = m.group(1).replace(",", ""), m.group(2)
    return number + unit if unit in NUMBER_UNITS else number


# Words before "may" that make it the month ("in may"), not the verb ("you may").
MONTH_CUES = frozenset("in of on since until till by during early late mid last next this".split())


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
            if i == 0 and not upper_inside and len(words) > 1 and low.endswith("ing"):
                continue
            entities.append(low)
    return entities


def normalised(text: str) -> str:
    """NFKC ("①" is "1", full-width letters are letters), apostrophes made plain."""
    return unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)


@lru_cache(maxsize=4096)
def features(text: str) -> Features:
    """Tokenise once (cached: cached entries are compared again and again)."""
    text = normalised(text)
    tokens = tuple(_WORD.findall(text))
    lower = tuple(t.lower() for t in tokens)
    numbers = tuple(
        sorted(
            n
            for i, t in enumerate(tokens)
            if (n := _number_of(t)) is not None and (t.lower() != "may" or _may_month(tokens, i))
        )
    )
    negated = any(t in NEGATIONS or t.endswith("n't") for t in lower)
    return Features(
        tokens=tokens,
        lower=lower,
        numbers=numbers,
        negated=negated,
        entities=tuple(_entity_tokens(text)),
    )


def numbers_match(a: Features, b: Features) -> bool:
    return Counter(a.numbers) == Counter(b.numbers)


def negation_matches(a: Features, b: Features) -> bool:
    return a.negated == b.negated


# Irregular forms of the antonym pairs' words (the regular ones are made by `_inflections`).
IRREGULAR = {
    "begin": ("began", "begun"), "fall": ("fell", "fallen"), "rise": ("rose", "risen"),
    "win": ("won",), "lose": ("lost",), "buy": ("bought",), "sell": ("sold",),
    "give": ("gave",), "take": ("took", "taken"), "send": ("sent",), "lend": ("lent",),
    "learn": ("learnt",), "write": ("wrote", "written"),
    "get": ("got", "gotten"), "bad": ("worse", "worst"), "good": ("better", "best"),
}  # fmt: skip
# Not inflected ("offer" is no form of "off"), and not taken as a form of another word:
# "given" ("given a list") and "taught" ("you will be taught" is "you will learn") are left out
# of IRREGULAR for the same reason.
PARTICLES = frozenset("on off up in out".split())


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
def _antonym_forms() -> dict[str, frozenset[str]]:
    """Each inflected form of a word of ANTONYM_PAIRS -> the pair words it is a form of."""
    forms: dict[str, set[str]] = {}
    for pair in ANTONYM_PAIRS:
        for word in pair:
            for form in _inflections(word):
                forms.setdefault(form, set()).add(word)
    return {form: frozenset(words) for form, words in forms.items()}


def _antonym_words(f: Features) -> frozenset[str]:
    forms = _antonym_forms()
    return frozenset(w for t in f.lower for w in forms.get(t, ()))


def antonyms_match(a: Features, b: Features) -> bool:
    wa, wb = _antonym_words(a), _antonym_words(b)
    for x, y in ANTONYM_PAIRS:
        sa = (x in wa, y in wa)
        sb = (x in wb, y in wb)
        # A swap (one text says x and not y, the other y and not x), not a mere addition.
        if (sa == (True, False) and sb == (False, True)) or (
            sa == (False, True) and sb == (True, False)
        ):
            return False
    return _prefix_matches(a, b) and _prefix_matches(b, a) and _direction_matches(a, b)


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
    """Words next to to/from/into/vs/than/in keep their side ("USD to EUR" vs "EUR to USD",
    "celsius in fahrenheit" vs "fahrenheit in celsius")."""
    for marker in ("to", "into", "from", "vs", "versus", "than", "in"):
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
    shared = [e for e in dict.fromkeys(a.entities) if e in b.entities]
    order_b = [e for e in dict.fromkeys(b.entities) if e in shared]
    return shared == order_b


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
