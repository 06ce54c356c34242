"""A learned verifier for semantic candidates (measured, NOT wired into the lookup).

Status: `bench/bench_semantic.py` compares it with a plain cosine threshold (see the Cache
section of bench/RESULTS.md). On QQP it serves about as many correct hits as the plain
threshold at the same wrong-hit share (0.8-0.95x at 1-4% wrong), and on the GPTCache pairs
fewer, so the gateway does not use it; it is kept, with its coefficients, so the experiment
can be rerun and extended.

Mean-pooled cosine puts topical neighbours ("How do I learn Python?" / "How do I learn Java?")
as close as paraphrases. The verifier adds a token-alignment score from the same encoder
(BERTScore-style: each contextual token vector of one text is matched to its most similar
token of the other; precision, recall, F1 and the worst-matched token on each side), the
length ratio and the lexical overlap, and maps them through a logistic model to a probability
that the cached answer fits the query. The coefficients live in `verifier_minilm.json`; they
were fitted by `bench/bench_semantic.py` (`THRIFTY_BENCH_TRAIN=1`) on QQP pairs disjoint from
the benchmark slice and its duplicate groups, with the nearest cached non-duplicates as
negatives. The hard guard (`guard.py`) still runs first and rejects the near-miss classes.

Cached token vectors are kept in the entry's payload, int8 with one float16 scale per token
(`encode_tokens`), so a lookup never re-embeds candidates.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .guard import features

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Tokens = npt.NDArray[np.float32]

MODEL_FILE = Path(__file__).with_name("verifier_minilm.json")
FEATURES = (
    "cosine",
    "precision",
    "recall",
    "f1",
    "min_pr",
    "query_worst",
    "cached_worst",
    "length_ratio",
    "overlap",
)


def encode_tokens(tokens: Tokens) -> str:
    """int8 token vectors with one float16 scale per token, base64 (~dim+2 bytes a token)."""
    import numpy as np

    scale = np.maximum(np.abs(tokens).max(axis=1, keepdims=True), 1e-8) / 127.0
    q = np.clip(np.rint(tokens / scale), -127, 127).astype(np.int8)
    raw = scale.astype(np.float16).tobytes() + q.tobytes()
    return base64.b64encode(raw).decode("ascii")


def decode_tokens(text: str, dim: int) -> Tokens:
    """Inverse of `encode_tokens`: unit token vectors of shape (tokens, dim)."""
    import numpy as np

    raw = base64.b64decode(text)
    n = len(raw) // (dim + 2)
    if n * (dim + 2) != len(raw):
        raise ValueError("token vectors do not match the embedding size")
    scale = np.frombuffer(raw[: 2 * n], dtype=np.float16).astype(np.float32).reshape(n, 1)
    q = np.frombuffer(raw[2 * n :], dtype=np.int8).reshape(n, dim).astype(np.float32)
    t = q * scale
    out: Tokens = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    return out


def alignment(query: Tokens, cached: Tokens) -> tuple[float, float, float, float, float]:
    """Greedy token alignment: precision (query tokens covered), recall (cached tokens
    covered), F1, and the worst-matched query / cached token."""
    if len(query) == 0 or len(cached) == 0:
        return 0.0, 0.0, 0.0, 0.0, 0.0
    sims = query @ cached.T
    best_q, best_c = sims.max(axis=1), sims.max(axis=0)
    p, r = float(best_q.mean()), float(best_c.mean())
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f1, float(best_q.min()), float(best_c.min())


def pair_features(
    query: str, cached: str, cosine: float, query_tokens: Tokens, cached_tokens: Tokens
) -> list[float]:
    """The verifier's inputs, in `FEATURES` order."""
    p, r, f1, worst_q, worst_c = alignment(query_tokens, cached_tokens)
    a, b = features(query), features(cached)
    union = len(a.stems | b.stems)
    overlap = len(a.stems & b.stems) / union if union else 1.0
    la, lb = len(query_tokens), len(cached_tokens)
    ratio = min(la, lb) / max(la, lb, 1)
    return [cosine, p, r, f1, min(p, r), worst_q, worst_c, ratio, overlap]


@dataclass(frozen=True, slots=True)
class VerifierModel:
    """Standardised logistic regression over `FEATURES`."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    def probability(self, x: list[float]) -> float:
        import math

        z = self.intercept + sum(
            c * (v - m) / s for c, v, m, s in zip(self.coef, x, self.mean, self.scale, strict=True)
        )
        return 1.0 / (1.0 + math.exp(-z)) if z > -60 else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "features": list(FEATURES),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> VerifierModel:
        if data.get("features") != list(FEATURES):
            raise ValueError("verifier model features do not match this gateway")

        def floats(name: str) -> tuple[float, ...]:
            value = data[name]
            if not isinstance(value, list) or len(value) != len(FEATURES):
                raise ValueError(f"verifier model field {name!r} is malformed")
            return tuple(float(v) for v in value)

        intercept = data["intercept"]
        if not isinstance(intercept, int | float):
            raise ValueError("verifier model intercept is malformed")
        return cls(floats("mean"), floats("scale"), floats("coef"), float(intercept))


def load_model(path: Path = MODEL_FILE) -> VerifierModel:
    return VerifierModel.from_json(json.loads(path.read_text()))


@dataclass(frozen=True, slots=True)
class Verifier:
    """A model and the probability a candidate needs to be served."""

    model: VerifierModel
    threshold: float
    dim: int

    def probability(
        self, query: str, cached: str, cosine: float, query_tokens: Tokens, cached_tokens: str
    ) -> float:
        tokens = decode_tokens(cached_tokens, self.dim)
        return self.model.probability(pair_features(query, cached, cosine, query_tokens, tokens))

    def accepts(
        self, query: str, cached: str, cosine: float, query_tokens: Tokens, cached_tokens: str
    ) -> bool:
        p = self.probability(query, cached, cosine, query_tokens, cached_tokens)
        return p >= self.threshold
