"""Cache latency: exact hits end to end, semantic lookup cost, search at 100k entries.

* exact hit end to end: simulator + one gateway worker (separate processes) with an in-process
  exact store, then the same with Redis; one request fills the entry, then wrk (or the asyncio
  fallback) at 1 connection (p50/p99) and 16 connections (requests/s). Direct simulator
  latency at 1 connection is printed next to it.
* semantic lookup (embedding + search + guard + pair verifier) on one core, the embedder and
  the verifier at the policy's default precisions and each at float32:
  LocalEmbedder(threads=1), PairScorer(threads=1), an
  embedded qdrant-edge index holding 1,000 QQP questions, 300 QQP paraphrases under 64 tokens
  as queries.
* search at N (default 100,000) entries in the embedded index (random unit vectors, 384-d):
  worst case (all entries in one tenant and context) before, during (the slowest search
  included, through the swap) and after the background HNSW build, then with the longest
  unindexed tail a build leaves (`TAIL_SHARE`) added on top; spread over 100 tenants; and in
  four tenants of 25,000 after a build. Each figure also gives the share of searches that
  found the entry their query was made from.

Run: `uv run --frozen --all-extras python -m bench cache_latency`. Environment:
THRIFTY_BENCH_SECONDS (default 5), THRIFTY_BENCH_ENTRIES (100000).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.bench_gateway import BODY, HEADERS, _gateway_config
from bench.bench_semantic import load_workloads
from bench.loadgen import load
from bench.procs import free_port, process
from thrifty_core.api.cachepolicy import (
    EmbeddingModel,
    PairVerifier,
    Precision,
    SemanticLayer,
)
from thrifty_core.embedding.local import LocalEmbedder
from thrifty_core.embedding.pair import PairScorer
from thrifty_gateway.services.cache.entry import CachedAnswer
from thrifty_gateway.services.cache.guard import CHECKS, first_failure
from thrifty_gateway.services.cache.semantic import TAIL_SHARE, EdgeIndex, indexed_payload

SECONDS = float(os.environ.get("THRIFTY_BENCH_SECONDS", "5"))
ENTRIES = int(os.environ.get("THRIFTY_BENCH_ENTRIES", "100000"))
ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 300}}]}


def _pct(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "n": len(samples),
    }


def exact_hits(redis_url: str | None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="thrifty-bench-cache-"))
    sim_port, gw_port = free_port(), free_port()
    config = _gateway_config(sim_port, gw_port)
    stores = {"redisUrl": redis_url} if redis_url else {}
    config["cachePolicies"] = {"default": {"stores": stores}}
    config["defaultCachePolicy"] = "default"
    path = work / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    direct = f"http://127.0.0.1:{sim_port}/v1/chat/completions"
    proxied = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    sim = [sys.executable, "-m", "thrifty_cli", "simulator", "--port", str(sim_port)]
    gw = [sys.executable, "-m", "thrifty_gateway", "--config", str(path)]
    with (
        process(sim, work / "sim.log", f"http://127.0.0.1:{sim_port}/healthz", 30),
        process(gw, work / "gw.log", f"http://127.0.0.1:{gw_port}/readyz", 30),
    ):
        load(proxied, BODY, HEADERS, 1, 1)  # fills the entry, warms the paths
        time.sleep(0.5)
        one = load(proxied, BODY, HEADERS, 1, SECONDS)
        sixteen = load(proxied, BODY, HEADERS, 16, SECONDS)
        baseline = load(direct, BODY, HEADERS, 1, SECONDS)
    return {
        "store": "redis" if redis_url else "memory",
        "hit_1conn": one,
        "hit_16conn": sixteen,
        "direct_simulator_1conn": baseline,
        "targets": "p50 <= 1 ms end to end; >= 2500 rps at 16 connections",
    }


def semantic_lookup(
    embedding: Precision | None = None,
    floor: float | None = None,
    judged: int | None = None,
    precision: Precision | None = None,
) -> dict[str, Any]:
    """What the gateway's lookup thread does, timed per part: embed the query, search the
    index (policy default floor, top 5), run the guard's checks, score the survivors with
    the pair verifier (policy defaults unless given)."""
    embedding = embedding or EmbeddingModel().precision
    embedder = LocalEmbedder(threads=1, precision=embedding)
    precision = precision or PairVerifier().precision
    verifier = PairScorer(threads=1, precision=precision)
    floor = floor if floor is not None else SemanticLayer().threshold
    judged = judged if judged is not None else PairVerifier().max_candidates
    qqp = next(w for w in load_workloads() if w.name == "qqp")
    index = EdgeIndex(embedder.dim, "bench")
    vectors = embedder.embed(qqp.cached)
    for i, (text, vector) in enumerate(zip(qqp.cached, vectors, strict=True)):
        entry = CachedAnswer(body=ANSWER, tenant="t", route="r", model="m")
        key = hashlib.sha256(str(i).encode()).hexdigest()  # exact keys are SHA-256 digests
        index.add(key, vector.tolist(), "tenant:t", "ctx", text, entry, 3600)
    queries = [q for q in qqp.queries[: qqp.positives] if embedder.count_tokens(q) < 64][:300]
    for q in queries[:20]:
        embedder.embed([q])
        verifier.score(q, queries[:3])
    total, embed_only, search_only, guard_only, verify_only = [], [], [], [], []
    scored = []
    for q in queries:
        t0 = time.perf_counter()
        vector = embedder.embed([q])[0]
        t1 = time.perf_counter()
        candidates = index.search(vector.tolist(), "tenant:t", "ctx", floor, 5)
        t2 = time.perf_counter()
        passed = [c.query for c in candidates if first_failure(q, c.query, CHECKS) is None]
        passed = passed[:judged]  # the policy's maxCandidates
        t3 = time.perf_counter()
        if passed:
            verifier.score(q, passed)
        t4 = time.perf_counter()
        total.append(t4 - t0)
        embed_only.append(t1 - t0)
        search_only.append(t2 - t1)
        guard_only.append(t3 - t2)
        verify_only.append(t4 - t3)
        scored.append(len(passed))
    stored = index.count()
    index.close()
    return {
        "embedding_precision": embedding,
        "verifier_precision": precision,
        "cached": stored,
        "candidate_floor": floor,
        "max_candidates": judged,
        "candidates_scored_mean": round(float(np.mean(scored)), 2),
        "lookups_with_candidates": sum(1 for n in scored if n),
        "embedding_search_guard_verifier": _pct(total),
        "embedding": _pct(embed_only),
        "search": _pct(search_only),
        "guard": _pct(guard_only),
        "verifier": _pct(verify_only),
        "targets": "p50 <= 8 ms, p99 <= 20 ms (prompts < 64 tokens, one core)",
    }


def _fill(index: EdgeIndex, vectors: np.ndarray[Any, Any], scopes: int, first: int = 0) -> None:
    """Points `first` to the end of `vectors`, spread over `scopes` tenants."""
    qe = index._qe  # bulk load through the engine (add() is one point per call)
    entry = CachedAnswer(body=ANSWER, tenant="t", route="r", model="m")
    for start in range(first, len(vectors), 2000):
        points = [
            qe.Point(
                i,
                vectors[i].tolist(),
                indexed_payload(f"tenant:t{i % scopes}", "ctx", f"q{i}", entry, 86400, "bench"),
            )
            for i in range(start, min(start + 2000, len(vectors)))
        ]
        index._shard.update(qe.UpdateOperation.upsert_points(points))


def _search_times(
    index: EdgeIndex,
    vectors: np.ndarray[Any, Any],
    scopes: int,
    searches: int = 300,
    rng: np.random.Generator | None = None,
    found: list[bool] | None = None,
) -> list[float]:
    rng = rng if rng is not None else np.random.default_rng(1)
    out = []
    for k in rng.choice(len(vectors), searches, replace=False):
        noisy = vectors[k] + rng.standard_normal(vectors.shape[1]).astype(np.float32) * 0.02
        noisy /= np.linalg.norm(noisy)
        t = time.perf_counter()
        hits = index.search(noisy.tolist(), f"tenant:t{k % scopes}", "ctx", 0.5, 5)
        out.append(time.perf_counter() - t)
        if found is not None:
            found.append(bool(hits) and hits[0].query == f"q{k}")
    return out


def _timed(
    index: EdgeIndex, vectors: np.ndarray[Any, Any], scopes: int, seed: int = 1
) -> dict[str, Any]:
    """Latency percentiles, and the share of searches whose first hit is the entry the query
    was made from (a copy with noise, cosine about 0.93; random vectors are the hardest case
    for a graph index: bench/RESULTS.md "Search recall" gives real embeddings)."""
    found: list[bool] = []
    times = _search_times(index, vectors, scopes, rng=np.random.default_rng(seed), found=found)
    return {**_pct(times), "found_its_entry": round(sum(found) / len(found), 3)}


def search_at_scale() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((ENTRIES, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    result: dict[str, Any] = {"entries": ENTRIES}
    spread = EdgeIndex(384, "bench")
    _fill(spread, vectors, 100)
    result["spread_100_tenants"] = _timed(spread, vectors, 100)
    spread.close()
    # Four tenants of 25,000: each larger than a search scans exactly, searched after a build.
    four = EdgeIndex(384, "bench")
    _fill(four, vectors, 4)
    four.optimize_in_background()
    four.wait_optimized()
    result["four_tenants_hnsw"] = _timed(four, vectors, 4)
    four.close()
    one = EdgeIndex(384, "bench")
    _fill(one, vectors, 1)
    result["one_context_unindexed"] = _timed(one, vectors, 1)
    started = time.perf_counter()
    one.optimize_in_background()
    # Searches keep being served while the build runs in its subprocess, and through the swap.
    during: list[float] = []
    queries = np.random.default_rng(2)  # new queries all along, not the same pages again
    while one.building():
        during += _search_times(one, vectors, 1, 20, queries)
    one.wait_optimized()
    result["hnsw_build_seconds"] = round(time.perf_counter() - started, 1)
    result["one_context_during_build"] = {
        **_pct(during),
        "max_ms": round(max(during, default=0.0) * 1e3, 1),
    }
    result["one_context_hnsw"] = _timed(one, vectors, 1)
    # Steady state: the longest unindexed tail before the next build is due, scanned by every
    # search on top of the HNSW index.
    tail = max(10_000, ENTRIES // TAIL_SHARE)
    grown = rng.standard_normal((ENTRIES + tail, 384)).astype(np.float32)
    grown[:ENTRIES] = vectors
    grown[ENTRIES:] /= np.linalg.norm(grown[ENTRIES:], axis=1, keepdims=True)
    _fill(one, grown, 1, first=ENTRIES)
    result["one_context_hnsw_plus_tail"] = {"tail": tail, **_timed(one, grown, 1, seed=3)}
    one.close()
    result["target"] = "p99 < 5 ms at 100k entries"
    return result


def main() -> dict[str, Any]:
    out: dict[str, Any] = {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}",
        "semantic_lookup": semantic_lookup(),
        "semantic_lookup_embedding_float32": semantic_lookup(embedding="float32"),
        "semantic_lookup_verifier_float32": semantic_lookup(precision="float32"),
        # A recall-leaning policy: more candidates above the floor for the verifier to score.
        "semantic_lookup_floor_0.75": semantic_lookup(floor=0.75),
        # Every candidate above the floor judged (maxCandidates 5, the most a policy allows).
        "semantic_lookup_judging_all": semantic_lookup(judged=5),
        "exact_hit_memory": exact_hits(None),
    }
    redis_bin = shutil.which("redis-server")
    if redis_bin:
        port = free_port()
        proc = subprocess.Popen(
            [redis_bin, "--port", str(port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.3)
            out["exact_hit_redis"] = exact_hits(f"redis://127.0.0.1:{port}/0")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    out["search_at_scale"] = search_at_scale()
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=1))
