"""The statement-pair perturbations used to train the pair verifier (bench/pair_statements.py)."""

from __future__ import annotations

import random

from bench.pair_statements import add_fact, drop_fact, examples, same_meaning, swap_word

SENTENCE = "The tutorials cover loading a dataset, preprocessing data, and evaluating predictions."
DONOR = "You can share your dataset on the Hub by creating a repository for it."


def test_drop_fact_removes_a_list_item_or_a_trailing_clause() -> None:
    outs = {drop_fact(SENTENCE, random.Random(seed)) for seed in range(20)}
    assert None not in outs and SENTENCE not in outs
    for out in outs:
        assert out is not None and len(out) < len(SENTENCE) and out.endswith(".")
    # One of the three list items is gone, the two others (and the sentence's start) remain.
    assert "The tutorials cover loading a dataset and evaluating predictions." in outs
    assert all(out is not None and out.startswith("The tutorials cover") for out in outs)
    assert drop_fact("Short and plain.", random.Random(0)) is None  # nothing to drop


def test_add_fact_appends_a_clause_of_the_donor() -> None:
    out = add_fact(SENTENCE, DONOR, random.Random(1))
    assert out is not None and out.startswith(SENTENCE.rstrip("."))
    added = out[len(SENTENCE.rstrip(".")) :].lower()
    assert any(word.lower() in added for word in DONOR.rstrip(".").split()[1:])
    assert add_fact(SENTENCE, "Too short.", random.Random(1)) is None


def test_swap_word_replaces_exactly_one_content_word() -> None:
    out = swap_word(SENTENCE, DONOR, random.Random(2))
    assert out is not None and out != SENTENCE
    before, after = SENTENCE.split(), out.split()
    assert len(before) == len(after)
    assert sum(a != b for a, b in zip(before, after, strict=True)) == 1


def test_same_meaning_edits_never_return_the_sentence_itself() -> None:
    rng = random.Random(3)
    for _ in range(20):
        out = same_meaning(SENTENCE, rng)
        assert out != SENTENCE
        # Meaning-preserving edits keep the facts: every list item is still there.
        for item in ("loading", "preprocessing", "evaluating"):
            assert item in out.lower()


def test_examples_label_edits_as_same_and_perturbations_as_different() -> None:
    conv = [SENTENCE, DONOR, "Streaming lets you iterate over a dataset without downloading it."]
    rows = examples([conv], {SENTENCE: [DONOR]}, random.Random(4))
    labels = {label for _, _, label in rows}
    assert labels == {0.0, 1.0}
    assert (SENTENCE, DONOR, 0.0) in rows  # the mined neighbour is a negative
    for a, b, label in rows:
        assert a != b
        if label == 1.0:
            assert SENTENCE in (a, b) or DONOR in (a, b) or conv[2] in (a, b)
