"""Semantic-cache quality: Thrifty (threshold + guard) vs a plain cosine threshold.

Data: /work/shared/data (see its README): the GPTCache pairs and the QQP duplicate pairs.
For each set, N origins are cached (answer = their id); their paraphrases are the positive
queries and N other origins, never cached, are the negative queries. A hit is correct when the
cached question is in the query's duplicate group (QQP: connected components over all pairs,
lower-cased, whitespace collapsed; GPTCache: the pair itself), otherwise wrong. Both methods use
the same all-MiniLM-L6-v2 embeddings and the same exact top-k search; Thrifty serves the best
candidate above the threshold that passes the guard, the plain cache serves the top-1 above the
threshold.

Run: `uv run --frozen --all-extras python -m bench semantic` (prints JSON);
THRIFTY_BENCH_QUANTIZE=1 uses the int8 graph, THRIFTY_BENCH_THRESHOLD the default point.
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

from thrifty_core.embedding.local import LocalEmbedder
from thrifty_gateway.services.cache.guard import CHECKS, first_failure

DATA = Path(
    os.environ.get("THRIFTY_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")
)
N = int(os.environ.get("THRIFTY_BENCH_PAIRS", "1000"))
TOP_K = 5
THRESHOLDS = [round(0.70 + 0.01 * i, 2) for i in range(30)]
DEFAULT_THRESHOLD = float(os.environ.get("THRIFTY_BENCH_THRESHOLD", "0.90"))  # policy default
OPERATING_POINTS = (0.85, 0.90, 0.95)

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


Verifier = Callable[[str, str], bool]


def curve(
    w: Workload,
    sims: npt.NDArray[np.float32],
    order: npt.NDArray[np.int64],
    verify: Verifier | None,
) -> list[dict[str, float]]:
    """Correct and wrong hits at each threshold."""
    memo: dict[tuple[int, int], bool] = {}
    rows = []
    for threshold in THRESHOLDS:
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
        hits = correct + wrong
        rows.append(
            {
                "threshold": threshold,
                "correct_hits": correct,
                "correct_rate": round(correct / w.positives, 4),
                "wrong_hits": wrong,
                "wrong_share": round(wrong / hits, 4) if hits else 0.0,
            }
        )
    return rows


def best_plain_at(rows: list[dict[str, float]], wrong_share: float) -> dict[str, float]:
    """The plain threshold's most correct hits with a wrong-hit share <= `wrong_share`."""
    ok = [r for r in rows if r["wrong_share"] <= wrong_share and r["correct_hits"] > 0]
    if not ok:
        return {"threshold": 1.0, "correct_hits": 0, "wrong_share": 0.0}
    return max(ok, key=lambda r: r["correct_hits"])


def guard_verifier(checks: Sequence[str]) -> Verifier:
    return lambda q, c: first_failure(q, c, checks) is None


def evaluate(w: Workload, embedder: LocalEmbedder) -> dict[str, Any]:
    t0 = time.perf_counter()
    ec = embedder.embed(w.cached)
    eq = embedder.embed(w.queries)
    embed_s = time.perf_counter() - t0
    sims = eq @ ec.T
    order = np.argsort(-sims, axis=1)[:, :TOP_K]
    plain = curve(w, sims, order, None)
    thrifty = curve(w, sims, order, guard_verifier(tuple(CHECKS)))
    at_default = next(r for r in thrifty if r["threshold"] == DEFAULT_THRESHOLD)
    points = {}
    for t in OPERATING_POINTS:
        mine = next(r for r in thrifty if r["threshold"] == t)
        same = best_plain_at(plain, mine["wrong_share"])
        points[str(t)] = {
            "thrifty": mine,
            "plain_same_threshold": next(r for r in plain if r["threshold"] == t),
            "plain_best_at_same_wrong_share": same,
            "ratio": round(mine["correct_hits"] / max(same["correct_hits"], 1), 2),
        }
    plain_same = best_plain_at(plain, at_default["wrong_share"])
    ablation = {}
    for name in CHECKS:
        rows = curve(w, sims, order, guard_verifier((name,)))
        ablation[name] = next(r for r in rows if r["threshold"] == DEFAULT_THRESHOLD)
    ratio = at_default["correct_hits"] / max(plain_same["correct_hits"], 1)
    return {
        "cached": len(w.cached),
        "positives": w.positives,
        "negatives": len(w.queries) - w.positives,
        "embed_seconds": round(embed_s, 2),
        "default_threshold": DEFAULT_THRESHOLD,
        "thrifty_at_default": at_default,
        "plain_at_same_wrong_share": plain_same,
        "plain_at_default": next(r for r in plain if r["threshold"] == DEFAULT_THRESHOLD),
        "correct_hits_ratio": round(ratio, 2),
        "meets_targets": at_default["wrong_share"] <= MAX_WRONG_SHARE and ratio >= 1.5,
        "operating_points": points,
        "single_check_at_default": ablation,
        "curve_thrifty": thrifty,
        "curve_plain": plain,
    }


def near_misses(embedder: LocalEmbedder) -> dict[str, Any]:
    """How many near-miss pairs a plain threshold serves, and how many Thrifty serves."""
    a = embedder.embed([x for x, _ in NEAR_MISSES])
    b = embedder.embed([y for _, y in NEAR_MISSES])
    sims = (a * b).sum(axis=1)
    guarded = [first_failure(x, y, tuple(CHECKS)) for x, y in NEAR_MISSES]
    out: dict[str, Any] = {"pairs": len(NEAR_MISSES), "cosine_min": round(float(sims.min()), 3)}
    for t in OPERATING_POINTS:
        out[f"plain_served_at_{t}"] = int((sims >= t).sum())
        out[f"thrifty_served_at_{t}"] = int(
            sum(1 for s, g in zip(sims, guarded, strict=True) if s >= t and g is None)
        )
    out["rejected_by"] = {name: guarded.count(name) for name in CHECKS}
    return out


def main() -> dict[str, Any]:
    quantize = os.environ.get("THRIFTY_BENCH_QUANTIZE", "") == "1"
    embedder = LocalEmbedder(threads=max(1, (os.cpu_count() or 1)), quantize=quantize)
    result: dict[str, Any] = {"embedding": "int8 dense layers" if quantize else "float32"}
    result |= {w.name: evaluate(w, embedder) for w in load_workloads()}
    result["near_misses"] = near_misses(embedder)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
