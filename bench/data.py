"""The evaluation data in ../shared/data and the QQP duplicate groups (shared by the semantic
benchmark and the pair-verifier training, which must agree on what the benchmark holds)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

DATA = Path(
    os.environ.get("THRIFTY_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")
)
# QQP pairs the semantic benchmark uses (cached origins + held-out negatives: 2 x N pairs); the
# verifier's training excludes their duplicate groups.
BENCH_PAIRS = int(os.environ.get("THRIFTY_BENCH_PAIRS", "1000"))


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def qqp_groups(pairs: Sequence[dict[str, str]]) -> dict[str, int]:
    """Connected components of the duplicate graph over normalised texts."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for pair in pairs:
        a, b = find(norm(pair["origin"])), find(norm(pair["similar"]))
        if a != b:
            parent[a] = b
    roots: dict[str, int] = {}
    return {q: roots.setdefault(find(q), len(roots)) for q in list(parent)}
