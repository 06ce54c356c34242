"""Training the classifier student: frozen sentence embeddings + a softmax head.

The head is scikit-learn's multinomial `LogisticRegression` on the shared embedder's
L2-normalised vectors. Soft labels (the teacher's distribution from its logprobs) train as
weighted copies of an example, one per label with its probability as the sample weight.
A slice of the training set (hashed by text) is kept for calibration: temperature scaling
(one scalar T minimising the negative log-likelihood of softmax(logits / T)), so that the
confidence the gateway thresholds on is close to the student's real accuracy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from thrifty_core.embedding.protocol import Embedder
from thrifty_core.student.classifier import ClassifierHead, softmax

from .dataset import Example, held_out

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)

EMBED_BATCH = 64
MISSING_CLASS_BIAS = -30.0


@dataclass(frozen=True, slots=True)
class TrainResult:
    head: ClassifierHead
    seconds: float
    embed_seconds: float
    examples: int
    calibration_examples: int
    nll_before: float
    nll_after: float

    def info(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "embed_seconds": round(self.embed_seconds, 3),
            "examples": self.examples,
            "calibration_examples": self.calibration_examples,
            "temperature": round(self.head.temperature, 4),
            "calibration_nll_before": round(self.nll_before, 4),
            "calibration_nll_after": round(self.nll_after, 4),
        }


def embed_texts(
    embedder: Embedder, texts: Sequence[str], batch: int = EMBED_BATCH
) -> npt.NDArray[np.float32]:
    """Embed in batches (bounded memory, similar lengths batch well)."""
    import numpy as np

    if not texts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        out[idx] = embedder.embed([texts[i] for i in idx])
    return out


def nll(proba: npt.NDArray[np.float32], targets: npt.NDArray[np.int64]) -> float:
    import numpy as np

    picked = proba[np.arange(len(targets)), targets]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def fit_temperature(logits: npt.NDArray[np.float32], targets: npt.NDArray[np.int64]) -> float:
    """The temperature minimising the NLL of `targets`: a log-spaced grid, then a finer one
    around the best point (the NLL is unimodal in log T)."""
    import numpy as np

    if len(targets) == 0:
        return 1.0
    grid = np.geomspace(0.05, 20.0, 41)
    best = min(grid, key=lambda t: nll(softmax(logits, float(t)), targets))
    fine = np.geomspace(best / 1.2, best * 1.2, 21)
    return float(min(fine, key=lambda t: nll(softmax(logits, float(t)), targets)))


def fit_head(
    x: npt.NDArray[np.float32],
    examples: Sequence[Example],
    labels: Sequence[str],
    *,
    c: float = 10.0,
    max_iter: int = 300,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Multinomial logistic regression; returns (weights (dim, k), bias (k,))."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    pos = {label: i for i, label in enumerate(labels)}
    rows: list[int] = []
    ys: list[int] = []
    weights: list[float] = []
    for i, ex in enumerate(examples):
        dist = ex.soft or {ex.label: 1.0}
        for label, p in dist.items():
            if label in pos and p > 0:
                rows.append(i)
                ys.append(pos[label])
                weights.append(p)
    y = np.asarray(ys)
    present = np.unique(y)
    w = np.zeros((x.shape[1], len(labels)), dtype=np.float32)
    b = np.full(len(labels), MISSING_CLASS_BIAS, dtype=np.float32)
    if len(present) == 1:  # a one-class head always answers that class
        b[present[0]] = 0.0
        return w, b
    model = LogisticRegression(C=c, max_iter=max_iter, tol=1e-3)
    model.fit(x[rows], y, sample_weight=np.asarray(weights))
    classes = model.classes_.astype(int)
    if len(classes) == 2:
        # Binary problems have one coefficient row, the log-odds of classes[1]: softmax over
        # (0, row) gives the same probabilities.
        w[:, classes[0]] = 0.0
        w[:, classes[1]] = model.coef_[0].astype(np.float32)
        b[classes[0]] = 0.0
        b[classes[1]] = np.float32(model.intercept_[0])
        return w, b
    w[:, classes] = model.coef_.T.astype(np.float32)
    b[classes] = model.intercept_.astype(np.float32)
    return w, b


def train_classifier(
    examples: Sequence[Example],
    labels: Sequence[str],
    embedder: Embedder,
    *,
    calibration_fraction: float = 0.1,
    c: float = 10.0,
    max_iter: int = 300,
    seed: int = 1,
) -> TrainResult:
    """Embed, fit the head on most examples, calibrate its temperature on the rest."""
    import numpy as np

    if not examples:
        raise ValueError("no training examples")
    started = time.perf_counter()
    x = embed_texts(embedder, [e.text for e in examples])
    embedded = time.perf_counter()
    calib = np.asarray([held_out(e.text, calibration_fraction, seed) for e in examples])
    if calib.all() or calib.sum() < 10:
        calib[:] = False
    fit_idx = np.flatnonzero(~calib)
    weights, bias = fit_head(
        x[fit_idx], [examples[int(i)] for i in fit_idx], labels, c=c, max_iter=max_iter
    )
    pos = {label: i for i, label in enumerate(labels)}
    cal_idx = np.flatnonzero(calib)
    logits = x[cal_idx] @ weights + bias
    targets = np.asarray([pos[examples[int(i)].label] for i in cal_idx], dtype=np.int64)
    temperature = fit_temperature(logits, targets) if len(cal_idx) else 1.0
    before = nll(softmax(logits, 1.0), targets) if len(cal_idx) else 0.0
    after = nll(softmax(logits, temperature), targets) if len(cal_idx) else 0.0
    head = ClassifierHead(weights, bias, tuple(labels), temperature)
    done = time.perf_counter()
    log.info(
        "trained classifier head on %d examples in %.1fs (embedding %.1fs), T=%.3f",
        len(fit_idx),
        done - started,
        embedded - started,
        temperature,
    )
    return TrainResult(
        head=head,
        seconds=done - started,
        embed_seconds=embedded - started,
        examples=len(fit_idx),
        calibration_examples=len(cal_idx),
        nll_before=before,
        nll_after=after,
    )
