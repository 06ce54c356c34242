"""The word lists of the wrong-hit guard (`guard`): English only, lower case."""

from __future__ import annotations

NUMBER_WORDS = {
    "zero": "0", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40",
    "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
    "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
    "first": "1", "second": "2", "third": "3", "fourth": "4", "fifth": "5", "sixth": "6",
    "seventh": "7", "eighth": "8", "ninth": "9", "tenth": "10", "twice": "2", "half": "0.5",
    "dozen": "12", "double": "2", "triple": "3",
    "noon": "12:00", "midday": "12:00", "midnight": "00:00",
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
    "not no never none nobody nothing neither nor without cannot nowhere unable lack lacks "
    "lacked lacking barely hardly scarcely rarely seldom".split()
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
        "safe/risky safe/unsafe "
        "true/fake real/fake friend/enemy agree/disagree same/different similar/different "
        "ascending/descending asc/desc synchronous/asynchronous "
        "sync/async public/private import/export mean/median "
        "arrive/depart arrival/departure accept/decline approve/deny approve/reject hire/fire "
        "freeze/thaw freezing/boiling husband/wife king/queen mother/father son/daughter "
        "brother/sister deposit/withdraw debit/credit income/expense profit/loss "
        "sunrise/sunset inbound/outbound incoming/outgoing upstream/downstream "
        "uppercase/lowercase horizontal/vertical prefix/suffix header/footer top/bottom "
        "front/back forward/backward ascend/descend expand/collapse show/hide join/leave "
        "enter/exit login/logout attach/detach merge/split deep/shallow upper/lower even/odd "
        "full/empty inner/outer wired/wireless small/medium medium/large "
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


# Words before "may" that make it the month ("in may"), not the verb ("you may").
MONTH_CUES = frozenset("in of on since until till by during early late mid last next this".split())


# Words that negate the verb after them with "to": "it fails to start", "she refused to sign".
# ("avoid" and "fail to" are left out: "avoid procrastination" is "stop procrastinating", "why
# India fails to get medals" is "why India fails in the Olympics".)
NEGATING_BEFORE_TO = frozenset(
    "refuse refuses refused refusing forget forgets forgot forgetting neglect neglects "
    "neglected neglecting".split()
)

_INFLECTED_CLASSES = frozenset("more include keep shorten".split())
# Opposite classes: a text with words of one side only, against one with words of the other
# side only, asks the opposite ("more than 5" / "fewer than 5", "all files" / "some files").
# Their words also match their regular inflections (`guard._inflections`).
# (Quantifiers, auxiliaries and last / next are matched as written: "bother" is no form of
# "both", nor "willing" of "will"; the flag says which classes are inflected.)
OPPOSITE_CLASSES: tuple[tuple[frozenset[str], frozenset[str], bool], ...] = tuple(
    (frozenset(a.split()), frozenset(b.split()), a.split()[0] in _INFLECTED_CLASSES)
    for a, b in (
        (
            "more greater above over exceed higher larger bigger heavier thicker taller wider "
            "deeper pricier costlier beyond",
            "less fewer below under lower smaller lighter thinner shorter narrower shallower "
            "cheaper beneath",
        ),
        (
            "all every each both always everything everyone everybody entire whole",
            "some any either several sometimes something someone anyone anything",
        ),
        ("many most often usually much lots", "few little rarely seldom hardly barely scarcely"),
        ("did was were", "will shall"),
        (
            "include inclusive",
            "except exclude exclusive skip omit ignore",
        ),
        ("keep retain preserve", "remove delete drop discard"),
        ("last previous past", "next coming upcoming"),
        ("shorten", "lengthen"),
    )
)

# Prefixes of opposite meaning over the same word: overpay / underpay, pre-tax / post-tax.
OPPOSITE_PREFIXES = (
    ("over", "under"), ("pre", "post"), ("up", "down"), ("inc", "dec"), ("en", "de"),
    ("hyper", "hypo"), ("north", "south"), ("east", "west"), ("max", "min"), ("upper", "lower"),
    ("inter", "intra"), ("ap", "pre"), ("pro", "anti"), ("in", "out"), ("im", "ex"),
)  # fmt: skip
OPPOSITE_BASE_MIN = 3  # letters of the shared word

# Groups of values: two texts that both name values of one group must name the same ones
# ("50 mg" / "50 mcg", "30 seconds" / "30 minutes", "this morning" / "this afternoon"). Each
# spelling -> its value. (Singular "second" is left out: "the second day" is an ordinal.)
_VALUE_GROUPS = {
    "mass": "mg=mg milligram=mg milligrams=mg mcg=mcg ug=mcg \u00b5g=mcg \u03bcg=mcg iu=iu "
    "microgram=mcg micrograms=mcg "
    "g=g gram=g grams=g kg=kg kgs=kg kilo=kg kilos=kg kilogram=kg kilograms=kg lb=lb lbs=lb "
    "pound=lb pounds=lb oz=oz ounce=oz ounces=oz",
    "volume": "ml=ml milliliter=ml milliliters=ml millilitre=ml millilitres=ml l=l liter=l "
    "liters=l litre=l litres=l gallon=gal gallons=gal cup=cup cups=cup tsp=tsp teaspoon=tsp "
    "teaspoons=tsp tbsp=tbsp tablespoon=tbsp tablespoons=tbsp",
    "data": "kb=kb kilobyte=kb kilobytes=kb mb=mb megabyte=mb megabytes=mb gb=gb gigabyte=gb "
    "gigabytes=gb tb=tb terabyte=tb terabytes=tb kilobit=kbit kilobits=kbit megabit=mbit "
    "megabits=mbit gigabit=gbit gigabits=gbit",
    # rates: "mbps" is megabits as people type it; bytes per second only when the case says so
    # ("MBps", "MB/s": `guard._REWRITES`)
    "rate": "kbps=kbit/s mbps=mbit/s gbps=gbit/s kilobits-per-second=kbit/s "
    "megabits-per-second=mbit/s gigabits-per-second=gbit/s kilobytes-per-second=kb/s "
    "megabytes-per-second=mb/s gigabytes-per-second=gb/s",
    "length": "mm=mm millimeter=mm millimeters=mm cm=cm centimeter=cm centimeters=cm "
    "centimetre=cm centimetres=cm km=km kilometer=km kilometers=km kilometre=km "
    "kilometres=km meter=m meters=m metre=m metres=m inch=in inches=in ft=ft foot=ft feet=ft "
    "mile=mi miles=mi",
    "duration": "seconds=s secs=s sec=s minute=min minutes=min mins=min hour=h hours=h hrs=h "
    "day=d days=d week=w weeks=w month=mo months=mo year=y years=y",
    "temperature": "celsius=c fahrenheit=f kelvin=k",
    "currency": "usd=usd dollar=usd dollars=usd eur=eur euro=eur euros=eur gbp=gbp "
    "jpy=jpy yen=jpy inr=inr rupee=inr rupees=inr cny=cny yuan=cny",
    "daypart": "morning=morning mornings=morning afternoon=afternoon afternoons=afternoon "
    "evening=evening evenings=evening night=night nights=night tonight=night",
    "day": "today=0 tomorrow=+1 yesterday=-1",
    "frequency": "hourly=h daily=d weekly=w biweekly=2w fortnightly=2w monthly=mo "
    "quarterly=q annually=y yearly=y",
}
VALUE_GROUPS: dict[str, dict[str, str]] = {
    group: dict(item.split("=") for item in spec.split()) for group, spec in _VALUE_GROUPS.items()
}

# Capitalised first words of an instruction that name no entity ("Summarize ...",
# "Translate ..."): without them "Summarize" against "Summarise" was an entity swap.
INITIAL_VERBS = frozenset(
    "summarize summarise translate convert remove delete fix repair optimize optimise reword "
    "rephrase rewrite turn compare calculate check correct draft suggest recommend classify "
    "extract format sort count analyze analyse review improve simplify shorten lengthen expand "
    "edit proofread answer build design plan add update change get run install use keep stop "
    "include skip exclude ignore maximize maximise minimize minimise generate define outline "
    "paraphrase fill complete continue say name identify select choose pick".split()
)

# Words that split a sentence into chunks that may move as a whole ("flights from Paris to
# London" / "flights to London from Paris"), and those that join two words that may trade
# places ("Python and Java" / "Java and Python").
CHUNK_MARKERS = frozenset("to from into than of by for in on over instead with at as about".split())
CONJUNCTIONS = frozenset("and or vs versus".split())
# Left out of the word-order comparison.
ORDER_IGNORED = frozenset(["please"])
# Words that may differ (added or dropped) with the order of the others still compared.
ORDER_SLACK = 2
# "one" is a number beside other numbers only (`guard.features`), and inside one
# ("twenty-one").
NUMBER_PARTS = {"one": "1"}
# Endings that negate the word before them: "caffeine-free", "wireless".
NEGATING_SUFFIXES = ("-free", "less")
# Negators that negate nothing when the next word is this one: "a lack of sleep" is a noun.
NEGATION_UNLESS_NEXT = {"lack": "of"}
# Words left out of the opposite classes in these set phrases: "the best album of all time" is
# not "some of the best albums" against "all".
SET_PHRASES = (("all", "time"), ("at", "all"))
# Subject and object forms: a text that differs from the other only by one in place of the
# other swaps who does what ("should I tell my boss" / "should my boss tell me").
PRONOUN_ROLES = (("i", "me"), ("he", "him"), ("we", "us"), ("they", "them"))
# Forms of one auxiliary that follow the subject when the roles swap ("does my landlord owe me"
# / "do I owe my landlord"): the word -> its base.
AUXILIARY_FORMS = {
    "do": "do", "does": "do", "am": "be", "is": "be", "are": "be", "was": "was", "were": "was",
    "has": "have", "have": "have",
}  # fmt: skip
