"""Search recall of the embedded index on real embeddings, in one partition and in four.

Stored: every distinct text of ../shared/data (QQP and GPTCache sentences, Banking77 queries)
and the human turns of the ShareGPT dump, cut at 400 characters, about 97,000 in all, embedded
with all-MiniLM-L6-v2 in float32; queries: the paraphrase side of the first 1,000 QQP pairs
(never stored). Each stored text gets one of P partitions at random, each query its cached
paraphrase's partition. A search "finds" when its first hit is the exact nearest entry of
that partition (brute force). Compared: the shard's configuration (`edge_config`: a graph per
partition) and the former one (one graph over all entries, the partition as a filter), each
built in this process.

With THRIFTY_QDRANT_URL set (a Qdrant server, nothing else in it), the same comparison runs on
the server too: a collection set up by the gateway's `ServerIndex` (a graph per partition,
searched through `ServerIndex.search`) against one made as gateways made them before (Qdrant's
default graph, `scope` as the tenant index, searches filtered on scope and context). Without
it the server part reports why it did not run.

The embeddings take about 25 minutes on two cores the first time and are kept in
`~/.cache/thrifty/bench/` (THRIFTY_BENCH_CACHE). Run:
`uv run --frozen --all-extras python -m bench search_recall`.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.bench_cache_latency import _pct
from bench.data import DATA
from thrifty_gateway.services.cache.entry import CachedAnswer
from thrifty_gateway.services.cache.semantic import ServerIndex, edge_config, indexed_payload

QUERIES = 1_000
MAX_CHARS = 400
CACHE = Path(os.environ.get("THRIFTY_BENCH_CACHE", Path.home() / ".cache/thrifty/bench"))

Floats = npt.NDArray[np.float32]


def _texts() -> tuple[list[str], list[str], list[int]]:
    """(stored texts, queries, index of each query's cached paraphrase or -1)."""
    from thrifty_cli.sharegpt import sharegpt_conversations

    with gzip.open(DATA / "qqp_duplicate_pairs_dev.json.gz") as fh:
        qqp = json.load(fh)
    gpt = json.loads((DATA / "gptcache_mock_pairs.json").read_text())
    queries = [p["similar"] for p in qqp[:QUERIES]]
    held, seen, texts = set(queries), set(), []

    def add(text: str) -> None:
        text = text.strip()[:MAX_CHARS]
        if text and text not in seen and text not in held:
            seen.add(text)
            texts.append(text)

    for pair in qqp + gpt:
        add(pair["origin"])
        add(pair["similar"])
    with open(DATA / "banking77" / "train.csv", newline="") as rows:
        for row in csv.reader(rows):
            add(row[0])
    for conversation in sharegpt_conversations():
        for turn in conversation:
            if turn.get("from") == "human" and isinstance(turn.get("value"), str):
                add(turn["value"])
    where = {text: i for i, text in enumerate(texts)}
    origins = [where.get(p["origin"].strip()[:MAX_CHARS], -1) for p in qqp[:QUERIES]]
    return texts, queries, origins


def _embeddings() -> tuple[Floats, Floats, npt.NDArray[np.int64]]:
    files = [CACHE / f"recall_{name}.npy" for name in ("store", "queries", "origins")]
    if not all(f.exists() for f in files):
        from thrifty_core.embedding.local import LocalEmbedder

        texts, queries, origins = _texts()
        embedder = LocalEmbedder(threads=os.cpu_count() or 1, precision="float32")
        store = np.concatenate(
            [embedder.embed(texts[i : i + 64]) for i in range(0, len(texts), 64)]
        )
        CACHE.mkdir(parents=True, exist_ok=True)
        for f, array in zip(
            files, (store, embedder.embed(queries), np.array(origins)), strict=True
        ):
            np.save(f, array)
    store, asked, origins = (np.load(f) for f in files)
    return store, asked, origins


def _measure(
    config: Any, store: Floats, asked: Floats, origins: npt.NDArray[np.int64], partitions: int
) -> dict[str, Any]:
    import qdrant_edge as qe

    part = np.random.default_rng(0).integers(0, partitions, len(store))
    with tempfile.TemporaryDirectory() as path:
        shard = qe.EdgeShard.create(path, config)
        index = qe.KeywordIndexParams(is_tenant=True)
        shard.update(qe.UpdateOperation.create_field_index("partition", index))
        for start in range(0, len(store), 2_000):
            points = [
                qe.Point(i, store[i].tolist(), {"partition": f"p{part[i]}"})
                for i in range(start, min(start + 2_000, len(store)))
            ]
            shard.update(qe.UpdateOperation.upsert_points(points))
        started = time.perf_counter()
        shard.optimize()
        built = time.perf_counter() - started
        found, times = 0, []
        for query, origin in zip(asked, origins, strict=True):
            p, nearest = _nearest(store, part, query, int(origin))
            flt = qe.Filter(must=[qe.FieldCondition("partition", match=qe.MatchValue(f"p{p}"))])
            request = qe.QueryRequest(limit=5, query=qe.Query.Nearest(query.tolist()), filter=flt)
            t = time.perf_counter()
            hits = shard.query(request)
            times.append(time.perf_counter() - t)
            found += bool(hits) and hits[0].id == nearest
        shard.close()
    return {"build_seconds": round(built, 1), "found_nearest": found / len(asked), **_pct(times)}


def _nearest(
    store: Floats, part: npt.NDArray[np.int64], query: Floats, origin: int
) -> tuple[int, int]:
    """(the query's partition, the exact nearest entry of it)."""
    p = int(part[origin]) if origin >= 0 else 0
    members = np.flatnonzero(part == p)
    return p, int(members[np.argmax(store[members] @ query)])


def _wait_indexed(client: Any, name: str, timeout: float = 1_800.0) -> float:
    """Seconds until the server's optimizers are done with the collection."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        info = client.get_collection(name)
        if str(info.status).lower().endswith("green") and str(
            info.optimizer_status
        ).lower().endswith("ok"):
            return time.perf_counter() - started
        time.sleep(1.0)
    raise TimeoutError(f"collection {name} still indexing after {timeout:.0f} s")


def _measure_server(
    url: str,
    shipped: bool,
    store: Floats,
    asked: Floats,
    origins: npt.NDArray[np.int64],
    partitions: int,
) -> dict[str, Any]:
    """One collection on the server, filled, indexed and searched (then dropped)."""
    from qdrant_client import QdrantClient, models

    name = f"thrifty-recall-{'shipped' if shipped else 'former'}-{partitions}"
    client = QdrantClient(url=url, timeout=600, check_compatibility=False)
    if client.collection_exists(name):
        client.delete_collection(name)
    index = None
    if shipped:
        index = ServerIndex(url, name, store.shape[1], "bench", policy="bench", timeout=60)
        index._ensure()
    else:  # as gateways of earlier versions made and searched it
        client.create_collection(
            name,
            vectors_config=models.VectorParams(size=store.shape[1], distance=models.Distance.DOT),
        )
        tenant = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
        client.create_payload_index(name, "scope", tenant)
        client.create_payload_index(name, "context", models.PayloadSchemaType.KEYWORD)
        client.create_payload_index(name, "expires", models.PayloadSchemaType.FLOAT)
    part = np.random.default_rng(0).integers(0, partitions, len(store))
    answer = CachedAnswer(body={}, tenant="t", route="r", model="m")
    for start in range(0, len(store), 1_000):
        ids = range(start, min(start + 1_000, len(store)))
        payloads = [
            {
                **indexed_payload(f"tenant:p{part[i]}", "ctx", str(i), answer, 86_400, "bench"),
                "policy": "bench",
            }
            for i in ids
        ]
        client.upload_points(
            name,
            [
                models.PointStruct(id=i, vector=store[i].tolist(), payload=pl)
                for i, pl in zip(ids, payloads, strict=True)
            ],
            wait=True,
        )
    built = _wait_indexed(client, name)
    found, times = 0, []
    for query, origin in zip(asked, origins, strict=True):
        p, nearest = _nearest(store, part, query, int(origin))
        t = time.perf_counter()
        if index is not None:
            first = [c.query for c in index.search(query.tolist(), f"tenant:p{p}", "ctx", 0.0, 5)]
        else:
            flt = models.Filter(
                must=[
                    models.FieldCondition(
                        key="scope", match=models.MatchValue(value=f"tenant:p{p}")
                    ),
                    models.FieldCondition(key="context", match=models.MatchValue(value="ctx")),
                    models.FieldCondition(key="expires", range=models.Range(gt=time.time())),
                ]
            )
            points = client.query_points(
                name, query=query.tolist(), query_filter=flt, limit=5, with_payload=["query"]
            ).points
            first = [str((pt.payload or {}).get("query")) for pt in points]
        times.append(time.perf_counter() - t)
        found += bool(first) and first[0] == str(nearest)
    if index is not None:
        index.close()
    client.delete_collection(name)
    client.close()
    return {"index_seconds": round(built, 1), "found_nearest": found / len(asked), **_pct(times)}


def main() -> dict[str, Any]:
    import qdrant_edge as qe

    store, asked, origins = _embeddings()
    shipped = edge_config(qe, store.shape[1], 1)
    former = qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=store.shape[1], distance=qe.Distance.Dot),
        max_search_threads=1,
        payload_memory=qe.Memory.Cached,
        hnsw_config=qe.HnswIndexConfig(
            m=16, ef_construct=64, full_scan_threshold=10_000, max_indexing_threads=1
        ),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=10_000),
    )
    out: dict[str, Any] = {"stored": len(store), "queries": len(asked)}
    for partitions in (1, 4):
        for name, config in (("graph_per_partition", shipped), ("one_graph_filtered", former)):
            out[f"{partitions}_partitions_{name}"] = _measure(
                config, store, asked, origins, partitions
            )
    url = os.environ.get("THRIFTY_QDRANT_URL")
    if not url:
        out["server"] = {"skipped": "THRIFTY_QDRANT_URL is not set (no Qdrant server)"}
        return out
    server: dict[str, Any] = {}
    for partitions in (1, 4):
        for name, shipped in (("graph_per_partition", True), ("one_graph_filtered", False)):
            server[f"{partitions}_partitions_{name}"] = _measure_server(
                url, shipped, store, asked, origins, partitions
            )
    out["server"] = server
    return out
