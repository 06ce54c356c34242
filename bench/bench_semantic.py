"""Semantic-cache quality: Thrifty (threshold + guard) vs a plain cosine threshold.

Data: /work/shared/data (see its README): the GPTCache pairs and the QQP duplicate pairs.
For each set, N origins are cached (answer = their id); their paraphrases are the positive
queries and N other origins, never cached, are the negative queries. A hit is correct when the
cached question is in the query's duplicate group (QQP: connected components over all pairs,
lower-cased, whitespace collapsed; GPTCache: the pair itself), otherwise wrong. All methods use
the same all-MiniLM-L6-v2 embeddings and the same exact top-k search:

* plain: the top-1 above a cosine threshold (thresholds every 0.005, so the "plain at the same
  wrong-hit share" comparison gives the plain cache its best point);
* guard (what the gateway ships, at the policy's default threshold): the best candidate above
  the cosine threshold that passes the hand-written guard;
* verifier (an experiment, not wired into the gateway: it did not beat the plain threshold):
  candidates above 0.8 cosine that pass the guard, in cosine order, served when the learned
  verifier's probability (token alignment + lexical features, `verifier.py`) reaches a
  threshold; cached token vectors go through the int8 payload encoding it would use;
* verifier_rerank: the same candidates re-ranked by the verifier's probability.

`THRIFTY_BENCH_TRAIN=1` first refits the verifier on QQP pairs after the benchmark slice whose
duplicate groups do not touch it (cache their origins, query with their paraphrases and with
held-out origins; every top-5 neighbour above 0.6 cosine that passes the guard is a row, labelled
by duplicate group) and writes `verifier_minilm.json`. GPTCache is never used for training.

Run: `uv run --frozen --all-extras python -m bench semantic` (prints JSON);
THRIFTY_BENCH_QUANTIZE=1 uses the int8 graph.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from thrifty_core.api.cachepolicy import SemanticLayer
from thrifty_core.embedding.local import LocalEmbedder
from thrifty_gateway.services.cache.guard import CHECKS, first_failure
from thrifty_gateway.services.cache.verifier import (
    MODEL_FILE,
    VerifierModel,
    decode_tokens,
    encode_tokens,
    load_model,
    pair_features,
)

DATA = Path(
    os.environ.get("THRIFTY_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")
)
N = int(os.environ.get("THRIFTY_BENCH_PAIRS", "1000"))
TOP_K = 5
THRESHOLDS = [round(0.70 + 0.01 * i, 2) for i in range(30)]
PLAIN_THRESHOLDS = [round(0.70 + 0.005 * i, 3) for i in range(60)]
PROBABILITIES = [round(0.50 + 0.01 * i, 2) for i in range(50)]
DEFAULT_THRESHOLD = SemanticLayer().threshold  # the policy default
VERIFIER_FLOOR = 0.8  # cosine prefilter of the verifier experiment
DEFAULT_PROBABILITY = 0.95
OPERATING_POINTS = (0.85, 0.90, 0.95)
TRAIN_FLOOR = 0.6
TRAIN_PAIRS = int(os.environ.get("THRIFTY_BENCH_TRAIN_PAIRS", "6000"))

# Pairs that differ only by a negation, a number, a date, a direction or a named entity: a
# cache must never serve one for the other.
NEAR_MISSES = [
    ("Is Python a compiled language?", "Is Python not a compiled language?"),
    ("Why can't I sleep at night?", "Why can I sleep at night?"),
    ("Who won the World Cup in 2014?", "Who won the World Cup in 2018?"),
    ("What is 15% of 200?", "What is 15% of 300?"),
    ("Give me three tips for sleeping better", "Give me five tips for sleeping better"),
    ("What happened on March 3?", "What happened on March 4?"),
    ("How do I sort a list in Python 2?", "How do I sort a list in Python 3?"),
    ("How do I start the docker container?", "How do I stop the docker container?"),
    ("How to increase my credit score", "How to decrease my credit score"),
    ("What is the best time to buy stocks?", "What is the best time to sell stocks?"),
    ("How do I enable dark mode?", "How do I disable dark mode?"),
    ("Convert USD to EUR", "Convert EUR to USD"),
    ("How do I upload files to S3?", "How do I download files from S3?"),
    ("What should I eat before a workout?", "What should I eat after a workout?"),
    ("How to lose weight fast?", "How to gain weight fast?"),
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("Who is the CEO of Google?", "Who is the CEO of Microsoft?"),
    ("How do I install numpy on Windows?", "How do I install numpy on Ubuntu?"),
    ("What did Obama say about healthcare?", "What did Trump say about healthcare?"),
    ("Is coffee bad for your health?", "Is coffee not bad for your health?"),
]
MAX_WRONG_SHARE = 0.02


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def qqp_groups(pairs: Sequence[dict[str, str]]) -> dict[str, int]:
    """Connected components of the duplicate graph over normalised questions."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for pair in pairs:
        a, b = find(_norm(pair["origin"])), find(_norm(pair["similar"]))
        if a != b:
            parent[a] = b
    roots: dict[str, int] = {}
    return {q: roots.setdefault(find(q), len(roots)) for q in list(parent)}


class Workload:
    """Cached texts + positive and negative queries, each with a duplicate-group id."""

    def __init__(self, name: str, pairs: Sequence[dict[str, str]], grouped: bool) -> None:
        self.name = name
        groups = qqp_groups(pairs) if grouped else {}

        def gid(text: str, fallback: int) -> int:
            return groups.get(_norm(text), fallback) if grouped else fallback

        cached = pairs[:N]
        held = pairs[N : 2 * N]
        self.cached = [p["origin"] for p in cached]
        self.cached_groups = [gid(p["origin"], i) for i, p in enumerate(cached)]
        self.queries = [p["similar"] for p in cached] + [p["origin"] for p in held]
        self.query_groups = [gid(p["similar"], i) for i, p in enumerate(cached)] + [
            gid(p["origin"], 10_000_000 + i) for i, p in enumerate(held)
        ]
        self.positives = len(cached)


def load_workloads() -> list[Workload]:
    gpt = json.loads((DATA / "gptcache_mock_pairs.json").read_text())
    with gzip.open(DATA / "qqp_duplicate_pairs_dev.json.gz") as fh:
        qqp = json.load(fh)
    return [_gpt_split(gpt), Workload("qqp", qqp, grouped=True)]


def _gpt_split(pairs: Sequence[dict[str, str]]) -> Workload:
    """GPTCache has 999 pairs: cache the first half, hold the second half out as negatives."""
    n = min(N, len(pairs) // 2)
    w = Workload.__new__(Workload)
    w.name = "gptcache"
    w.cached = [p["origin"] for p in pairs[:n]]
    w.cached_groups = list(range(n))
    w.queries = [p["similar"] for p in pairs[:n]] + [p["origin"] for p in pairs[n : 2 * n]]
    w.query_groups = list(range(n)) + [10_000_000 + i for i in range(n)]
    w.positives = n
    return w


Check = Callable[[str, str], bool]
Row = dict[str, float]


def _row(threshold: float, correct: int, wrong: int, positives: int) -> Row:
    hits = correct + wrong
    return {
        "threshold": threshold,
        "correct_hits": correct,
        "correct_rate": round(correct / positives, 4),
        "wrong_hits": wrong,
        "wrong_share": round(wrong / hits, 4) if hits else 0.0,
    }


def curve(
    w: Workload,
    sims: npt.NDArray[np.float32],
    order: npt.NDArray[np.int64],
    verify: Check | None,
    thresholds: Sequence[float] = THRESHOLDS,
) -> list[Row]:
    """Correct and wrong hits at each cosine threshold (top-1, or first passing `verify`)."""
    memo: dict[tuple[int, int], bool] = {}
    rows = []
    for threshold in thresholds:
        correct = wrong = 0
        for q in range(len(w.queries)):
            for rank in range(TOP_K if verify else 1):
                c = int(order[q, rank])
                if sims[q, c] < threshold:
                    break
                if verify is not None:
                    key = (q, c)
                    if key not in memo:
                        memo[key] = verify(w.queries[q], w.cached[c])
                    if not memo[key]:
                        continue
                if w.cached_groups[c] == w.query_groups[q]:
                    correct += 1
                else:
                    wrong += 1
                break
        rows.append(_row(threshold, correct, wrong, w.positives))
    return rows


# Per query: (cosine, probability, correct) of each top-k candidate that passes the guard.
Scored = list[list[tuple[float, float, bool]]]


def score_candidates(
    w: Workload,
    sims: npt.NDArray[np.float32],
    order: npt.NDArray[np.int64],
    tokens: dict[str, npt.NDArray[np.float32]],
    model: VerifierModel,
    floor: float,
) -> Scored:
    out: Scored = []
    for q, query in enumerate(w.queries):
        row = []
        for rank in range(TOP_K):
            c = int(order[q, rank])
            cos = float(sims[q, c])
            if cos < floor:
                break
            cached = w.cached[c]
            if first_failure(query, cached, tuple(CHECKS)) is not None:
                continue
            x = pair_features(query, cached, cos, tokens[query], tokens[cached])
            row.append((cos, model.probability(x), w.cached_groups[c] == w.query_groups[q]))
        out.append(row)
    return out


def verifier_curve(
    scored: Scored, positives: int, cos_floor: float, rerank: bool = False
) -> list[Row]:
    """Correct and wrong hits at each verifier probability threshold."""
    rows = []
    for t in PROBABILITIES:
        correct = wrong = 0
        for cands in scored:
            ok = [c for c in cands if c[0] >= cos_floor and c[1] >= t]
            if not ok:
                continue
            pick = max(ok, key=lambda c: c[1]) if rerank else ok[0]
            correct += pick[2]
            wrong += not pick[2]
        rows.append(_row(t, correct, wrong, positives))
    return rows


def best_plain_at(rows: list[Row], wrong_share: float) -> Row:
    """The plain threshold's most correct hits with a wrong-hit share <= `wrong_share`."""
    ok = [r for r in rows if r["wrong_share"] <= wrong_share and r["correct_hits"] > 0]
    if not ok:
        return {"threshold": 1.0, "correct_hits": 0, "wrong_share": 0.0}
    return max(ok, key=lambda r: r["correct_hits"])


def compare(mine: Row, plain: list[Row]) -> dict[str, Any]:
    same = best_plain_at(plain, mine["wrong_share"])
    return {
        "point": mine,
        "plain_best_at_same_wrong_share": same,
        "ratio": round(mine["correct_hits"] / max(same["correct_hits"], 1), 2),
    }


def guard_check(checks: Sequence[str]) -> Check:
    return lambda q, c: first_failure(q, c, checks) is None


def embed_all(
    embedder: LocalEmbedder, texts: Sequence[str]
) -> tuple[dict[str, npt.NDArray[np.float32]], dict[str, npt.NDArray[np.float32]]]:
    """Vectors and token vectors (through the int8 payload encoding) of unique texts."""
    unique = sorted(set(texts), key=len)
    vectors: dict[str, npt.NDArray[np.float32]] = {}
    tokens: dict[str, npt.NDArray[np.float32]] = {}
    for i in range(0, len(unique), 64):
        batch = unique[i : i + 64]
        v, t = embedder.embed_with_tokens(batch)
        for text, vec, tok in zip(batch, v, t, strict=True):
            vectors[text] = vec
            tokens[text] = decode_tokens(encode_tokens(tok), embedder.dim)
    return vectors, tokens


def evaluate(w: Workload, embedder: LocalEmbedder, model: VerifierModel) -> dict[str, Any]:
    t0 = time.perf_counter()
    vectors, tokens = embed_all(embedder, w.cached + w.queries)
    embed_s = time.perf_counter() - t0
    ec = np.stack([vectors[t] for t in w.cached])
    eq = np.stack([vectors[t] for t in w.queries])
    sims = eq @ ec.T
    order = np.argsort(-sims, axis=1)[:, :TOP_K]
    plain = curve(w, sims, order, None, PLAIN_THRESHOLDS)
    guard = curve(w, sims, order, guard_check(tuple(CHECKS)))
    scored = score_candidates(w, sims, order, tokens, model, VERIFIER_FLOOR)
    verifier = verifier_curve(scored, w.positives, VERIFIER_FLOOR)
    rerank = verifier_curve(scored, w.positives, VERIFIER_FLOOR, rerank=True)
    at_default = next(r for r in guard if r["threshold"] == DEFAULT_THRESHOLD)
    default = compare(at_default, plain)
    guard_points = {
        str(t): compare(next(r for r in guard if r["threshold"] == t), plain)
        for t in OPERATING_POINTS
    }
    verifier_points = {
        f"p>={p}": compare(next(r for r in verifier if r["threshold"] == p), plain)
        for p in (0.8, 0.9, DEFAULT_PROBABILITY, 0.97)
    }
    floors = {
        f"cos>={f}": compare(
            next(
                r
                for r in verifier_curve(scored, w.positives, f)
                if r["threshold"] == DEFAULT_PROBABILITY
            ),
            plain,
        )
        for f in (0.8, 0.85, 0.9)
    }
    return {
        "cached": len(w.cached),
        "positives": w.positives,
        "negatives": len(w.queries) - w.positives,
        "embed_seconds": round(embed_s, 2),
        "default": {"cosine": DEFAULT_THRESHOLD} | default,
        "meets_targets": at_default["wrong_share"] <= MAX_WRONG_SHARE and default["ratio"] >= 1.5,
        "guard_only_points": guard_points,
        "verifier_points": verifier_points,
        "verifier_cosine_floors": floors,
        "verifier_rerank_at_default": compare(
            next(r for r in rerank if r["threshold"] == DEFAULT_PROBABILITY), plain
        ),
        "curve_verifier": verifier,
        "curve_guard": guard,
        "curve_plain": plain,
    }


def near_misses(embedder: LocalEmbedder, model: VerifierModel) -> dict[str, Any]:
    """How many near-miss pairs a plain threshold serves, and how many Thrifty serves."""
    a, ta = embedder.embed_with_tokens([x for x, _ in NEAR_MISSES])
    b, tb = embedder.embed_with_tokens([y for _, y in NEAR_MISSES])
    sims = (a * b).sum(axis=1)
    guarded = [first_failure(x, y, tuple(CHECKS)) for x, y in NEAR_MISSES]
    probs = [
        model.probability(pair_features(x, y, float(s), qa, qb))
        for (x, y), s, qa, qb in zip(NEAR_MISSES, sims, ta, tb, strict=True)
    ]
    out: dict[str, Any] = {"pairs": len(NEAR_MISSES), "cosine_min": round(float(sims.min()), 3)}
    for t in OPERATING_POINTS:
        out[f"plain_served_at_{t}"] = int((sims >= t).sum())
        out[f"guard_served_at_{t}"] = int(
            sum(1 for s, g in zip(sims, guarded, strict=True) if s >= t and g is None)
        )
    out["thrifty_served_at_default"] = int(
        sum(1 for s, g in zip(sims, guarded, strict=True) if s >= DEFAULT_THRESHOLD and g is None)
    )
    out["verifier_alone_served"] = sum(
        1
        for s, p in zip(sims, probs, strict=True)
        if s >= VERIFIER_FLOOR and p >= DEFAULT_PROBABILITY
    )
    out["rejected_by"] = {name: guarded.count(name) for name in CHECKS}
    return out


def fit_logistic(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], l2: float = 1e-2, steps: int = 50
) -> VerifierModel:
    """L2-regularised logistic regression on standardised features (Newton's method)."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    reg = l2 * len(y) * np.r_[np.ones(z.shape[1] - 1), 0.0]
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        grad = z.T @ (p - y) + reg * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg)
        w -= np.linalg.solve(hess, grad)
    return VerifierModel(
        mean=tuple(round(float(v), 6) for v in mean),
        scale=tuple(round(float(v), 6) for v in scale),
        coef=tuple(round(float(v), 6) for v in w[:-1]),
        intercept=round(float(w[-1]), 6),
    )


def train_verifier(embedder: LocalEmbedder) -> dict[str, Any]:
    """Fit the verifier on QQP pairs disjoint from the bench slice and its duplicate groups."""
    with gzip.open(DATA / "qqp_duplicate_pairs_dev.json.gz") as fh:
        qqp = json.load(fh)
    groups = qqp_groups(qqp)
    bench = {groups[_norm(p[k])] for p in qqp[: 2 * N] for k in ("origin", "similar")}
    pool = [p for p in qqp[2 * N : 2 * N + TRAIN_PAIRS] if groups[_norm(p["origin"])] not in bench]
    pool = [p for p in pool if groups[_norm(p["similar"])] not in bench]
    cut = len(pool) * 6 // 7
    cached = [p["origin"] for p in pool[:cut]]
    queries = [p["similar"] for p in pool[:cut]] + [p["origin"] for p in pool[cut:]]
    vectors, tokens = embed_all(embedder, cached + queries)
    sims = np.stack([vectors[t] for t in queries]) @ np.stack([vectors[t] for t in cached]).T
    order = np.argsort(-sims, axis=1)[:, :TOP_K]
    xs, ys = [], []
    for q, query in enumerate(queries):
        for c in order[q]:
            cos, text = float(sims[q, c]), cached[int(c)]
            if cos < TRAIN_FLOOR:
                break
            if text == query or first_failure(query, text, tuple(CHECKS)) is not None:
                continue
            xs.append(pair_features(query, text, cos, tokens[query], tokens[text]))
            ys.append(float(groups[_norm(text)] == groups[_norm(query)]))
    model = fit_logistic(np.array(xs), np.array(ys))
    MODEL_FILE.write_text(json.dumps(model.to_json(), indent=1) + "\n")
    return {"pairs": len(pool), "rows": len(ys), "positive_rows": int(sum(ys))}


def verifier_latency(quantize: bool, samples: int = 300) -> dict[str, Any]:
    """One core: embedding alone vs embedding + token vectors + the verifier over the top-5
    candidates whose token vectors come int8-encoded from the payload (no re-embedding)."""
    embedder = LocalEmbedder(threads=1, quantize=quantize)
    with gzip.open(DATA / "qqp_duplicate_pairs_dev.json.gz") as fh:
        qqp = json.load(fh)
    texts = [p["similar"] for p in qqp[:samples] if embedder.count_tokens(p["similar"]) < 64]
    _, cand_tokens = embedder.embed_with_tokens([p["origin"] for p in qqp[:TOP_K]])
    encoded = [encode_tokens(t) for t in cand_tokens]
    model = load_model()
    plain, verified = [], []
    for text in texts:
        t0 = time.perf_counter()
        embedder.embed([text])
        t1 = time.perf_counter()
        _, (tokens,) = embedder.embed_with_tokens([text])
        for cached, enc in zip(qqp[:TOP_K], encoded, strict=True):
            decoded = decode_tokens(enc, embedder.dim)
            model.probability(pair_features(text, cached["origin"], 0.9, tokens, decoded))
        t2 = time.perf_counter()
        plain.append(t1 - t0)
        verified.append(t2 - t1)

    def pct(xs: list[float]) -> dict[str, float]:
        return {q: round(1000 * float(np.percentile(xs, int(q[1:]))), 2) for q in ("p50", "p99")}

    return {
        "prompts": len(texts),
        "embedding_ms": pct(plain),
        "embedding_tokens_verifier_top5_ms": pct(verified),
        "payload_bytes_per_token": embedder.dim + 2,
    }


def main() -> dict[str, Any]:
    quantize = os.environ.get("THRIFTY_BENCH_QUANTIZE", "") == "1"
    embedder = LocalEmbedder(threads=max(1, (os.cpu_count() or 1)), quantize=quantize)
    result: dict[str, Any] = {"embedding": "int8 dense layers" if quantize else "float32"}
    if os.environ.get("THRIFTY_BENCH_TRAIN", "") == "1":
        result["training"] = train_verifier(embedder)
    model = load_model()
    result |= {w.name: evaluate(w, embedder, model) for w in load_workloads()}
    result["near_misses"] = near_misses(embedder, model)
    result["verifier_latency_one_core"] = verifier_latency(quantize)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
