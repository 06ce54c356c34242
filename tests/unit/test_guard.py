"""The wrong-hit guard: pairs that differ by a negation, a number, a date, a direction or a
named entity are rejected; plain paraphrases pass."""

from __future__ import annotations

import pytest

from thrifty_gateway.services.cache.guard import CHECKS, first_failure, passes

MUST_REJECT = [
    # negation
    ("Is Python a compiled language?", "Is Python not a compiled language?"),
    ("Why can't I sleep at night?", "Why can I sleep at night?"),
    ("Should I use a VPN?", "Should I never use a VPN?"),
    # numbers and dates
    ("Who won the World Cup in 2014?", "Who won the World Cup in 2018?"),
    ("What is 15% of 200?", "What is 15% of 300?"),
    ("Give me three tips for sleeping better", "Give me five tips for sleeping better"),
    ("What happened on March 3?", "What happened on March 4?"),
    ("What happened in March?", "What happened in April?"),
    ("How do I sort a list in Python 2?", "How do I sort a list in Python 3?"),
    # antonyms and direction
    ("How do I start the docker container?", "How do I stop the docker container?"),
    ("How to increase my credit score", "How to decrease my credit score"),
    ("What is the best time to buy stocks?", "What is the best time to sell stocks?"),
    ("How do I enable dark mode?", "How do I disable dark mode?"),
    ("Convert USD to EUR", "Convert EUR to USD"),
    ("How do I upload files to S3?", "How do I download files from S3?"),
    ("What should I eat before a workout?", "What should I eat after a workout?"),
    ("How to lose weight fast?", "How to gain weight fast?"),
    # named entities
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("Who is the CEO of Google?", "Who is the CEO of Microsoft?"),
    ("How do I install numpy on Windows?", "How do I install numpy on Ubuntu?"),
    ("What did Obama say about healthcare?", "What did Trump say about healthcare?"),
    # as people type them: typographic apostrophes, none, negating prefixes, inflections,
    # other digits (found by a black-box probe of the gateway: the verifier served them all)
    ("I want onions on my pizza", "I don\u2019t want onions on my pizza"),
    ("Should I take ibuprofen with alcohol?", "Shouldn\u2019t I take ibuprofen with alcohol?"),
    ("I want onions on my pizza please", "I dont want onions on my pizza please"),
    ("Why doesnt my code compile?", "Why does my code compile?"),
    ("Is it safe to eat raw chicken?", "Is it unsafe to eat raw chicken?"),
    ("Is the contract valid?", "Is the contract invalid?"),
    ("Is this statement accurate?", "Is this statement inaccurate?"),
    ("Is it likely to rain tomorrow?", "Is it unlikely to rain tomorrow?"),
    ("Is the restaurant open on Sundays?", "Is the restaurant closed on Sundays?"),
    ("How do I know if the firewall is enabled?", "How do I know if the firewall is disabled?"),
    ("What is the longest river in Africa?", "What is the shortest river in Africa?"),
    ("Show me the jobs that started yesterday", "Show me the jobs that stopped yesterday"),
    ("Was the file encoded?", "Was the file decoded?"),
    ("Why are prices rising?", "Why are prices falling?"),
    ("Who won the match?", "Who lost the match?"),
    ("Book a table for \u2460 person", "Book a table for \u2462 persons"),
    ("Book a table for \uff12 people", "Book a table for 3 people"),
    ("Set an alarm for 7am", "Set an alarm for 7pm"),
    ("What happened in May?", "What happened in June?"),
    ("Book it for 3 may", "Book it for 3 june"),
    ("Schedule the meeting on monday", "Schedule the meeting on tuesday"),
    ("Why did the payment fail?", "Why did the payment succeed?"),
    ("What time does the train arrive?", "What time does the train depart?"),
    ("What is 30 degrees celsius in fahrenheit?", "What is 30 degrees fahrenheit in celsius?"),
    ("How many minutes are in a week?", "How many hours are in a week?"),
]

MUST_PASS = [
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
]


@pytest.mark.parametrize(("a", "b"), MUST_REJECT)
def test_rejects_answer_changing_differences(a: str, b: str) -> None:
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
