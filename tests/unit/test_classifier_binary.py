"""fit_head with two labels: scikit-learn returns one coefficient row for a binary problem;
the head must still separate the classes (it used to answer 0.5 for everything)."""

from __future__ import annotations

import numpy as np

from thrifty_core.student.classifier import softmax
from thrifty_distill.classifier import fit_head
from thrifty_distill.dataset import Example

LABELS = ["no", "yes"]


def data(labels: list[str]) -> tuple[np.ndarray, list[Example]]:
    rng = np.random.default_rng(7)
    xs, examples = [], []
    for i in range(60):
        label = labels[i % len(labels)]
        center = np.zeros(8, dtype=np.float32)
        center[labels.index(label)] = 1.0
        xs.append(center + rng.normal(0, 0.1, 8).astype(np.float32))
        examples.append(Example(text=f"t{i}", answer=label, label=label))
    return np.asarray(xs, dtype=np.float32), examples


def test_a_binary_head_separates_the_two_classes() -> None:
    x, examples = data(LABELS)
    w, b = fit_head(x, examples, LABELS)
    assert w.shape == (8, 2) and b.shape == (2,)
    proba = softmax(x @ w + b)
    predicted = proba.argmax(axis=1)
    truth = np.asarray([LABELS.index(e.label) for e in examples])
    assert (predicted == truth).mean() == 1.0
    assert proba.max(axis=1).min() > 0.9  # confident, not 0.5
    assert np.all(w[:, 0] == 0.0) and b[0] == 0.0


def test_two_present_classes_among_more_labels_keep_the_missing_one_out() -> None:
    labels = ["a", "b", "c"]
    x, examples = data(["a", "c"])
    w, b = fit_head(x, examples, labels)
    proba = softmax(x @ w + b)
    assert proba[:, 1].max() < 1e-6  # "b" was never seen
    truth = np.asarray([labels.index(e.label) for e in examples])
    assert (proba.argmax(axis=1) == truth).all()
