"""The wrong-hit guard: pairs that differ by a negation, a number, a date, a direction or a
named entity are rejected; plain paraphrases pass."""

from __future__ import annotations

import pytest
from bench.bench_semantic import NEAR_MISSES

from thrifty_gateway.services.cache.guard import CHECKS, first_failure, passes

# With the semantic bench's near misses (NEAR_MISSES), which cover the first kinds.
MUST_REJECT = [
    ("Should I use a VPN?", "Should I never use a VPN?"),
    ("What happened in March?", "What happened in April?"),
    # as people type them: typographic apostrophes, none, negating prefixes, inflections,
    # other digits (found by a black-box probe of the gateway: the verifier served them all)
    ("Should I take ibuprofen with alcohol?", "Shouldn\u2019t I take ibuprofen with alcohol?"),
    ("I want onions on my pizza please", "I dont want onions on my pizza please"),
    ("Is this statement accurate?", "Is this statement inaccurate?"),
    ("Why are prices rising?", "Why are prices falling?"),
    ("Who won the match?", "Who lost the match?"),
    ("Book a table for \uff12 people", "Book a table for 3 people"),
    ("What happened in May?", "What happened in June?"),
    ("Book it for 3 may", "Book it for 3 june"),
    # a third round (216 written near misses, 66 served before): negators, quantifiers,
    # comparison scales and operators, units and times, signs, numbers in another order, words
    # that trade places, hyphenated and prefixed opposites, negating endings, tense
    ("Did she refuse to sign the contract?", "Did she agree to sign the contract?"),
    ("Cancel all my subscriptions", "Cancel any of my subscriptions"),
    ("Do many people use linux?", "Do few people use linux?"),
    ("Filter rows where price > 100", "Filter rows where price < 100"),
    ("Remind me this morning", "Remind me this afternoon"),
    ("Set the alarm for 7 a.m.", "Set the alarm for 7 p.m."),
    ("Is -18 degrees cold?", "Is 18 degrees cold?"),
    ("Divide 100 by 4", "Divide 4 by 100"),
    ("Move 200 dollars from checking into savings", "Move 200 dollars into checking from savings"),
    ("Is every square a rectangle?", "Is every rectangle a square?"),
    ("Is a long-term loan better?", "Is a short-term loan better?"),
    ("What happens if I overpay my taxes?", "What happens if I underpay my taxes?"),
    ("How do I increment a counter in python?", "How do I decrement a counter in python?"),
    ("Is caffeinated soda ok during pregnancy?", "Is caffeine-free soda ok during pregnancy?"),
    ("Sum the even numbers in a list", "Sum the odd numbers in a list"),
    ("Include the header row", "Skip the header row"),
    ("What was the weather in paris?", "What will the weather be in paris?"),
    ("Why did the payment fail?", "Why did the payment succeed?"),
    ("How many minutes are in a week?", "How many hours are in a week?"),
    # the review of that round: bypasses by spelling, plurals, units, a second marker
    ("Set an alarm for 7.30am", "Set an alarm for 7.30pm"),
    ("Filter rows where price \u2265 100", "Filter rows where price \u2264 100"),
    ("Is it \u22125\u00b0C outside?", "Is it 5\u00b0C outside?"),
    ("Is 50 \u00b5g of vitamin d safe?", "Is 50 mg of vitamin d safe?"),
    ("How to convert usd to eur", "How do I convert eur to usd"),
    ("How many cm in an inch?", "How many inches in a cm?"),
    ("Is a cat faster than a dog?", "Are dogs faster than cats?"),
    ("Does sarah owe mike money?", "Does mike owe sarah any money?"),
    ("Book a room for 2 adults and 1 child", "Book a room for 1 adult and 2 children"),
    ("Is it safe to eat raw eggs?", "Is it risky to eat raw eggs?"),
    ("Should I tell my boss?", "Should my boss tell me?"),
    ("Can my employer fire me?", "Can I fire my employer?"),
    # the eighth session: blind spots the seventh left (with four of the bench's)
    ("Should I take it daily?", "Should I take it on alternate days?"),
    ("Is a 1 Gb/s link enough?", "Is a 1 GB/s link enough?"),
    ("What download speed is 100 megabits?", "What download speed is 100 megabytes?"),
    ("Is a house boat cheaper than a flat?", "Is a boat house cheaper than a flat?"),
    ("Is he taller than me?", "Am I taller than him?"),
]

MUST_PASS = [
    # (from the review of the third round)
    ("Set an alarm for 7.30pm", "Set an alarm for 7:30pm"),
    ("What is 10 -3?", "What is 10 - 3?"),
    ("Give me one reason to learn Rust", "Give me 1 reason to learn Rust"),
    ("How many calories are in 1 banana?", "How many calories are in a banana?"),
    ("Does it work wirelessly?", "Is it wireless?"),
    ("Is it a bother to call them?", "Is it some trouble to call them?"),  # not "both"
    ("What causes a lack of sleep?", "What causes sleep deprivation?"),
    ("What is the best album of all time?", "What are some of the best albums ever?"),
    (
        "What's the time difference between New York and London?",
        "What is the time difference between London and New York?",
    ),
    ("Write me a story about a dragon and a knight", "Write a story about a knight and a dragon"),
    ("Can I get a refund?", "Can you give me a refund?"),  # (more than the pronoun differs)
    ("How do I reset my password?", "How can I reset my password?"),
    ("What is the capital of France?", "What's the capital city of France?"),
    ("How can I learn Python quickly?", "What is the fastest way to learn Python?"),
    ("Who won the World Cup in 2014?", "Which team won the 2014 World Cup?"),
    ("Explain recursion simply", "Explain recursion in simple terms"),
    ("Why is the sky blue?", "Why does the sky look blue?"),
    # the same negation however it is typed
    ("Why doesn\u2019t anybody answer my questions?", "Why doesn't anyone answer my questions?"),
    ("Why don\u2019t my tests run?", "Why dont my tests run?"),
    ("Is it unsafe to eat raw chicken?", "Is it dangerous to eat raw chicken?"),
    ("Will you marry a non virgin girl?", "Will you marry a non-virgin girl?"),
    # words that only look like forms of an antonym pair's words
    ("You will be taught how to load a dataset", "You will learn how to load a dataset"),
    ("What does the course offer?", "What is in the course?"),
    ("How do I get the settings of the app?", "How can I get the app settings?"),
    ("Does the universe have a beginning and an ending?", "Did the universe have a beginning?"),
    ("Is it possible to dream in a dream?", "Is it possible to have a dream in a dream?"),
    ("How do I set up 2fa?", "How do I set up two factor authentication?"),
    ("What happened on the 1st of May?", "What happened on the first of May?"),
    # "may" the verb is no month
    ("You may want to restart the router", "You might want to restart the router"),
    ("May I pay by card?", "Can I pay by card?"),
    # the same time or the same words in an order that keeps the meaning
    ("Schedule the call at 2pm", "Schedule the call at 14:00"),
    ("Set an alarm for 7 am", "Set an alarm for 7am"),
    ("Lunch at noon tomorrow", "Lunch at 12pm tomorrow"),
    (
        "What is the difference between Python and Java?",
        "What is the difference between Java and Python?",
    ),
    ("Flights from Paris to London", "Flights to London from Paris"),
    ("How are waves formed?", "How waves are formed?"),
    ("How does it feel to be old physically?", "Physically, how does it feel to be old?"),
    (
        "Which one is better for students, mac or windows?",
        "Which is better for students, mac or windows?",
    ),
    ("Summarize this article", "Summarise this article"),
    ("Was Horus born on 25th of December?", "Was Horus born on December 25?"),
    ("Give me one example of recursion", "Give me an example of recursion"),
    ("Compare python vs java", "Compare java vs python"),
    ("How many minutes are in an hour?", "How many minutes are there in one hour?"),
    # (the eighth session) the same frequency, rate or words another way
    ("Should I take it every other day?", "Should I take it every 2 days?"),
    ("Do I water it every other week?", "Do I water it on alternate weeks?"),
    ("Is 100 Mbps fast enough for streaming?", "Is 100 Mb/s fast enough for streaming?"),
    ("Is 100 Mbps fast enough for streaming?", "Is 100 mbps fast enough for streaming?"),
    ("Is 500MB/s fast for an SSD?", "Is 500 MBps fast for an SSD?"),
    ("Who will win upcoming election of USA?", "Who will win upcoming USA election?"),
    ("How can I learn Python quickly?", "How can I quickly learn Python?"),
]


@pytest.mark.parametrize(("a", "b"), MUST_REJECT + NEAR_MISSES)
def test_rejects_answer_changing_differences(a: str, b: str) -> None:
    """The pairs here and the semantic bench's near misses (which it scores with the models)."""
    assert not passes(a, b)
    assert not passes(b, a)


@pytest.mark.parametrize(("a", "b"), MUST_PASS)
def test_passes_paraphrases(a: str, b: str) -> None:
    assert first_failure(a, b, CHECKS) is None


def test_reports_the_failing_check() -> None:
    assert first_failure("in 2014", "in 2018", ["numbers"]) == "numbers"
    assert first_failure("start it", "stop it", ["antonyms"]) == "antonyms"
    assert first_failure("start it", "stop it", ["numbers"]) is None
    long_q = "Write a detailed essay about the history, causes, consequences and legacy of the war"
    assert first_failure("Write an essay", long_q, ["length"]) == "length"
