"""Semantic indexes (embedded qdrant-edge, and qdrant-client's local mode standing for a
server): hard scope and context filters, expiry, purge, keyspace versions."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from thrifty_gateway.services.cache.entry import CachedAnswer
from thrifty_gateway.services.cache.selector import Selector
from thrifty_gateway.services.cache.semantic import (
    EdgeIndex,
    SemanticIndex,
    ServerIndex,
    build_due,
    indexed_payload,
    partition_of,
    payload_of,
)

DIM = 8


def unit(*values: float) -> list[float]:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(values)] = values
    return [float(x) for x in v / np.linalg.norm(v)]


def entry(tenant: str = "a", tags: tuple[str, ...] = (), route: str = "r") -> CachedAnswer:
    return CachedAnswer(body={"answer": tenant}, tenant=tenant, route=route, model="m", tags=tags)


def key(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


@pytest.fixture(params=["edge", "client"])
def index(request: pytest.FixtureRequest) -> Iterator[SemanticIndex]:
    made: SemanticIndex = (
        EdgeIndex(DIM, "ks1")
        if request.param == "edge"
        else ServerIndex(":memory:", "c", DIM, "ks1")
    )
    yield made
    made.close()


def test_scope_and_context_are_hard_filters(index: SemanticIndex) -> None:
    index.add(key(1), unit(1, 0), "tenant:a", "ctx1", "q a", entry("a"), 60)
    index.add(key(2), unit(1, 0.01), "tenant:b", "ctx1", "q b", entry("b"), 60)
    index.add(key(3), unit(1, 0.02), "tenant:a", "ctx2", "q a2", entry("a"), 60)
    found = index.search(unit(1, 0), "tenant:a", "ctx1", 0.5, 5)
    assert [c.query for c in found] == ["q a"]
    assert found[0].entry.body == {"answer": "a"} and found[0].score > 0.99
    assert [c.query for c in index.search(unit(1, 0), "tenant:b", "ctx1", 0.5, 5)] == ["q b"]
    assert index.search(unit(1, 0), "tenant:c", "ctx1", 0.5, 5) == []
    assert index.search(unit(0, 1), "tenant:a", "ctx1", 0.5, 5) == []  # below threshold


def test_expired_entries_are_not_found(index: SemanticIndex) -> None:
    old = entry("a")
    old.created = time.time() - 120
    index.add(key(1), unit(1), "tenant:a", "ctx", "old", old, 60)
    index.add(key(2), unit(1, 0.1), "tenant:a", "ctx", "new", entry("a"), 60)
    assert [c.query for c in index.search(unit(1), "tenant:a", "ctx", 0.5, 5)] == ["new"]


def test_expired_nearest_entries_leave_their_places_to_live_ones(index: SemanticIndex) -> None:
    """The embedded index searches without the expiry first: when the nearest are expired, the
    live entries behind them still fill the places asked for."""
    for n in range(3):
        old = entry("a")
        old.created = time.time() - 120
        index.add(key(n), unit(1, 0.01 * n), "tenant:a", "ctx", f"old{n}", old, 60)
    index.add(key(10), unit(1, 0.2), "tenant:a", "ctx", "new1", entry("a"), 60)
    index.add(key(11), unit(1, 0.3), "tenant:a", "ctx", "new2", entry("a"), 60)
    assert [c.query for c in index.search(unit(1), "tenant:a", "ctx", 0.5, 1)] == ["new1"]
    assert [c.query for c in index.search(unit(1), "tenant:a", "ctx", 0.5, 2)] == ["new1", "new2"]


def test_purge_by_tenant_tag_route_age_and_all(index: SemanticIndex) -> None:
    index.add(key(1), unit(1), "tenant:a", "ctx", "a1", entry("a", ("faq",)), 600)
    index.add(key(2), unit(1, 0.1), "tenant:b", "ctx", "b1", entry("b"), 600)
    index.add(key(3), unit(1, 0.2), "tenant:a", "ctx", "a2", entry("a", route="x"), 600)
    assert index.count() == 3
    assert index.purge(Selector(tag="faq")) == 1
    assert index.purge(Selector(route="x")) == 1
    assert index.purge(Selector(tenant="b", older_than_seconds=3600)) == 0
    assert index.count() == 1
    assert index.purge(Selector()) == 1
    assert index.count() == 0


def test_a_purge_through_one_gateway_leaves_the_entries_of_others(index: SemanticIndex) -> None:
    """Gateways sharing a policy's collection: a purge names the gateway it came through and
    removes that gateway's entries, and those labelled with none (stored before the label)."""

    def labelled(gateway: str) -> CachedAnswer:
        e = entry("a")
        e.gateway = gateway
        return e

    index.add(key(1), unit(1), "gateway:ns/one:tenant:a", "ctx", "one", labelled("ns/one"), 600)
    index.add(key(2), unit(1), "gateway:ns/two:tenant:a", "ctx", "two", labelled("ns/two"), 600)
    index.add(key(3), unit(1), "tenant:a", "ctx", "old", labelled(""), 600)
    assert index.purge(Selector(tenant="a", gateway="ns/two")) == 2
    assert [c.query for c in index.search(unit(1), "gateway:ns/one:tenant:a", "ctx", 0.5, 5)] == [
        "one"
    ]
    assert index.search(unit(1), "gateway:ns/one:tenant:a", "ctx", 0.5, 5)[0].entry.gateway == (
        "ns/one"
    )
    assert index.purge(Selector(gateway="ns/two")) == 0
    assert index.purge(Selector(gateway="ns/one")) == 1
    assert index.count() == 0


def test_remove_takes_back_one_entry_by_its_exact_key(index: SemanticIndex) -> None:
    index.add(key(1), unit(1), "tenant:a", "ctx", "a1", entry("a"), 600)
    index.add(key(2), unit(1, 0.1), "tenant:a", "ctx", "a2", entry("a"), 600)
    index.remove(key(1))
    index.remove(key(3))  # never stored: nothing to do
    assert [c.query for c in index.search(unit(1), "tenant:a", "ctx", 0.5, 5)] == ["a2"]
    assert index.count() == 1


def test_a_new_keyspace_version_drops_old_entries(tmp_path: object) -> None:
    path = str(tmp_path)
    first = EdgeIndex(DIM, "ks1", path=path)
    first.add(key(1), unit(1), "tenant:a", "ctx", "q", entry(), 600)
    first.close()
    same = EdgeIndex(DIM, "ks1", path=path)
    assert same.count() == 1
    same.close()
    bumped = EdgeIndex(DIM, "ks2", path=path)
    assert bumped.count() == 0
    bumped.close()


def test_entries_stored_without_a_partition_are_dropped_on_load(tmp_path: Path) -> None:
    """Entries written before the partition field existed would never be found again: a
    restart on the same directory drops them, and keeps those that have one."""
    path = str(tmp_path)
    first = EdgeIndex(DIM, "ks1", path=path)
    first.add(key(1), unit(1), "tenant:a", "ctx", "kept", entry(), 600)
    qe = first._qe
    before = payload_of("tenant:a", "ctx", "older", entry(), 600, "ks1")
    first._shard.update(qe.UpdateOperation.upsert_points([qe.Point(7, unit(1, 0.1), before)]))
    assert first.count() == 2
    first.close()
    again = EdgeIndex(DIM, "ks1", path=path)
    assert again.count() == 1
    assert [c.query for c in again.search(unit(1), "tenant:a", "ctx", 0.5, 5)] == ["kept"]
    again.close()


def test_an_entry_whose_partition_disagrees_with_its_scope_is_never_served(
    index: SemanticIndex,
) -> None:
    """The partition holds the scope and the context; the search still checks both fields on
    what it returns (a point written wrongly, by a bug or by hand, stays unserved)."""
    forged = indexed_payload("tenant:b", "ctx", "theirs", entry("b"), 600, "ks1")
    forged["partition"] = partition_of("tenant:a", "ctx")
    if isinstance(index, EdgeIndex):
        qe = index._qe
        index._shard.update(qe.UpdateOperation.upsert_points([qe.Point(7, unit(1), forged)]))
    else:
        assert isinstance(index, ServerIndex)
        point = index._m.PointStruct(id=7, vector=unit(1), payload={**forged, "policy": ""})
        index._client.upsert("c", points=[point])
    index.add(key(1), unit(1, 0.1), "tenant:a", "ctx", "mine", entry("a"), 600)
    assert [c.query for c in index.search(unit(1), "tenant:a", "ctx", 0.5, 5)] == ["mine"]


def test_a_server_index_drops_its_entries_without_a_partition_at_set_up() -> None:
    """Entries written by gateways of earlier versions have no partition and would never be
    found: set-up drops this policy's, and leaves another policy's to that policy."""
    index = ServerIndex(":memory:", "c", DIM, "ks1", policy="pa")
    try:
        index.add(key(1), unit(1), "tenant:a", "ctx", "kept", entry(), 600)
        models = index._m
        older = [
            models.PointStruct(
                id=n,
                vector=unit(1, 0.1),
                payload={
                    **payload_of("tenant:a", "ctx", "older", entry(), 600, ks),
                    "policy": p,
                },
            )
            for n, p, ks in ((7, "pa", "ks1"), (8, "pb", "pb/ks1"))
        ]
        index._client.upsert("c", points=older)
        assert index._client.count("c").count == 3
        index._ready, index._retry_at = False, 0.0
        assert index.count() == 1  # set up again
        assert [c.query for c in index.search(unit(1), "tenant:a", "ctx", 0.5, 5)] == ["kept"]
        left = {(p.payload or {}).get("policy") for p in index._client.scroll("c")[0]}
        assert index._client.count("c").count == 2 and left == {"pa", "pb"}
    finally:
        index.close()


class _Hnsw:
    def __init__(self, m: int | None, payload_m: int | None) -> None:
        self.m, self.payload_m = m, payload_m


class _LayoutRecorder:
    """Records the collection updates `_ensure_layout` asks of the server (the local mode
    has no graphs: the real server's side is measured in bench/RESULTS.md)."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, Any]] = []

    def update_collection(self, name: str, hnsw_config: Any) -> None:
        self.updates.append((name, hnsw_config))

    def close(self) -> None:
        pass


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
@pytest.mark.parametrize(("version", "laid_out"), [("1.18.3", True), ("1.12.4", False)])
def test_a_server_gets_a_graph_per_partition_where_it_keeps_graphs_off_other_indexes(
    version: str, laid_out: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before 1.17 Qdrant ignores `enable_hnsw: false`: with `m=0` it would link a graph for
    every large value of every index (about ten over the whole collection), so such a server
    keeps its default graph. The engine is the client's local mode, standing for a server of
    `version` (it has no graphs: only the requests are checked)."""
    index = ServerIndex(":memory:", "c", DIM, "ks1")
    client = index._client
    made: list[Any] = []
    switched: list[Any] = []
    create = client.create_collection

    def record_create(name: str, **kwargs: Any) -> bool:
        made.append(kwargs.get("hnsw_config"))
        return create(name, **kwargs)

    monkeypatch.setattr(client, "info", lambda: type("Info", (), {"version": version})())
    monkeypatch.setattr(client, "create_collection", record_create)
    calls: list[str] = []
    index_field = client.create_payload_index

    def record_index(name: str, field: str, schema: Any) -> Any:
        calls.append("index")
        return index_field(name, field, schema)

    def record_switch(_name: str, hnsw_config: Any) -> None:
        calls.append("switch")
        switched.append(hnsw_config)

    monkeypatch.setattr(client, "create_payload_index", record_index)
    monkeypatch.setattr(client, "update_collection", record_switch)
    index._collection, index._local, index._ready, index._retry_at = "new", False, False, 0.0
    index.add(key(1), unit(1), "tenant:a", "ctx", "q", entry(), 600)
    assert [c.query for c in index.search(unit(1), "tenant:a", "ctx", 0.5, 5)] == ["q"]
    if laid_out:
        assert [(h.m, h.payload_m) for h in made] == [(0, 16)]
        # the local mode reports Qdrant's default graph whatever it was given: switched, after
        # every index is re-made (the server's rebuild starts at the switch)
        assert [(h.m, h.payload_m) for h in switched] == [(0, 16)]
        assert calls[-1] == "switch" and calls.count("index") == 12
    else:
        assert made == [None] and switched == []
    index.close()


def test_a_server_collection_with_one_graph_over_all_entries_is_switched_to_partitions() -> None:
    index = ServerIndex(":memory:", "c", DIM, "ks1")
    index._client.close()
    recorder = _LayoutRecorder()
    index._client = recorder  # type: ignore[assignment]
    index._ensure_layout(_Hnsw(16, None))  # Qdrant's default
    assert [(n, c.m, c.payload_m) for n, c in recorder.updates] == [("c", 0, 16)]
    index._ensure_layout(_Hnsw(0, 16))  # laid out already
    index._ensure_layout(_Hnsw(0, 16))
    assert len(recorder.updates) == 1
    index._ensure_layout(_Hnsw(0, 8))  # payload graphs of another size
    assert len(recorder.updates) == 2


@pytest.mark.parametrize("kind", ["edge", "client"])
def test_maintenance_drops_expired_and_the_oldest_above_the_cap(kind: str) -> None:
    index: EdgeIndex | ServerIndex = (
        EdgeIndex(DIM, "ks1", max_entries=3)
        if kind == "edge"
        else ServerIndex(":memory:", "c", DIM, "ks1", policy="p", max_entries=3)
    )
    try:
        expired = entry()
        expired.created = time.time() - 120
        index.add(key(0), unit(1), "tenant:a", "ctx", "expired", expired, 60)
        for n in range(1, 6):
            e = entry()
            e.created = time.time() - 100 + n
            index.add(key(n), unit(1, n / 10), "tenant:a", "ctx", f"q{n}", e, 600)
        assert index.count() == 6
        assert index.maintain() == 2
        left = {c.query for c in index.search(unit(1), "tenant:a", "ctx", 0.1, 10)}
        assert left == {"q3", "q4", "q5"}
    finally:
        index.close()


def test_a_server_index_sets_up_on_first_use_once_qdrant_answers() -> None:
    """Qdrant down at start: no exception, lookups fail fast (the caller bypasses) and the set-up
    is retried, at most every SETUP_RETRY seconds, until it succeeds."""
    from qdrant_client import QdrantClient

    from tests.services import free_port

    index = ServerIndex(f"http://127.0.0.1:{free_port()}", "c", DIM, "ks1")
    with pytest.raises(ConnectionError):  # within the retry pause: no network call
        index.search(unit(1, 0), "tenant:a", "ctx", 0.5, 5)
    # Qdrant comes up (stand-in: the client's local mode) and the pause has passed.
    index._client.close()
    index._client = QdrantClient(location=":memory:")
    index._local = True
    index._retry_at = 0.0
    index.add(key(1), unit(1, 0), "tenant:a", "ctx", "q", entry("a"), 60)
    assert [c.query for c in index.search(unit(1, 0), "tenant:a", "ctx", 0.5, 5)] == ["q"]
    index.close()


def test_a_server_index_waits_for_a_collection_of_its_vector_size() -> None:
    """After an embedding change the old collection has the old size: the gateway bypasses
    (no writes of the wrong size) until the collection Job has recreated it."""
    from qdrant_client import QdrantClient, models

    from tests.services import free_port

    index = ServerIndex(f"http://127.0.0.1:{free_port()}", "c", DIM, "ks1")
    index._client.close()
    local = QdrantClient(location=":memory:")
    local.create_collection("c", vectors_config=models.VectorParams(size=4, distance="Dot"))
    index._client, index._local, index._retry_at = local, True, 0.0
    with pytest.raises(ValueError, match="vector size 4, want 8"):
        index.search(unit(1, 0), "tenant:a", "ctx", 0.5, 5)
    local.delete_collection("c")
    local.create_collection("c", vectors_config=models.VectorParams(size=DIM, distance="Dot"))
    index._retry_at = 0.0
    index.add(key(1), unit(1, 0), "tenant:a", "ctx", "q", entry("a"), 60)
    assert [c.query for c in index.search(unit(1, 0), "tenant:a", "ctx", 0.5, 5)] == ["q"]
    index.close()


def test_policies_sharing_a_collection_keep_to_their_own_entries() -> None:
    """Set-up after a restart drops only this policy's older keyspaces, and a purge or count
    reaches only this policy's entries (the others' stay servable)."""
    first = ServerIndex(":memory:", "shared", DIM, "pa/v1", policy="pa")
    second = ServerIndex(":memory:", "shared", DIM, "pb/v1", policy="pb")
    second._client.close()
    second._client = first._client  # one Qdrant, two policies
    try:
        first.add(key(1), unit(1), "tenant:a", "ctx", "qa", entry("a"), 600)
        second.add(key(2), unit(1), "tenant:a", "ctx", "qb", entry("a"), 600)
        assert second.purge(Selector(tenant="a")) == 1
        assert [c.query for c in first.search(unit(1), "tenant:a", "ctx", 0.5, 5)] == ["qa"]
        second.add(key(3), unit(1), "tenant:a", "ctx", "qb2", entry("a"), 600)
        restarted = ServerIndex(":memory:", "shared", DIM, "pa/v1", policy="pa")
        restarted._client.close()
        restarted._client, restarted._ready, restarted._retry_at = first._client, False, 0.0
        assert restarted.count() == 1  # set up again: pa's entry kept, pb's untouched
        assert second.count() == 1
        bumped = ServerIndex(":memory:", "shared", DIM, "pa/v2", policy="pa")
        bumped._client.close()
        bumped._client, bumped._ready, bumped._retry_at = first._client, False, 0.0
        assert bumped.count() == 0  # pa's old keyspace dropped at set-up
        assert [c.query for c in second.search(unit(1), "tenant:a", "ctx", 0.5, 5)] == ["qb2"]
    finally:
        first.close()


def test_the_hnsw_build_runs_off_the_process_and_keeps_every_update(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The edge engine holds the GIL while it builds its index; the build runs in a subprocess
    on a copy. With that subprocess stopped (SIGSTOP) mid-build, searches and updates in this
    process still complete; what was added, removed or purged during the build is in the shard
    that replaces the live one."""
    import os
    import signal
    import subprocess
    import threading

    builds: list[subprocess.Popen[bytes]] = []
    launched = threading.Event()
    real_popen = subprocess.Popen

    def stopped_build(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = real_popen(*args, **kwargs)  # type: ignore[call-overload]
        os.kill(proc.pid, signal.SIGSTOP)  # held until the updates below are done
        builds.append(proc)
        launched.set()
        return proc

    monkeypatch.setattr(subprocess, "Popen", stopped_build)  # the module the index calls
    rng = np.random.default_rng(0)
    index = EdgeIndex(DIM, "ks1", path=str(tmp_path), optimize_every=10**9)
    try:
        vectors = rng.standard_normal((12_000, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for i, v in enumerate(vectors):
            index.add(key(i), v.tolist(), f"tenant:{i % 3}", "ctx", f"q{i}", entry(), 600)
        live = index._shard
        assert index.optimize_in_background()
        assert not index.optimize_in_background() and index.building()  # one build at a time
        assert launched.wait(60)
        (build,) = builds
        found: list[list[str]] = []

        def meanwhile() -> None:
            # During the build: one added, one removed, one tenant's tagged entry purged.
            index.add(key(99_999), unit(1), "tenant:new", "ctx", "late", entry("new"), 600)
            index.remove(key(5))
            tagged = entry(tags=("t",))
            index.add(key(99_998), unit(0, 1), "tenant:0", "ctx", "tagged", tagged, 600)
            index.purge(Selector(tag="t"))
            found.append([c.query for c in index.search(unit(1), "tenant:new", "ctx", 0.5, 5)])

        worker = threading.Thread(target=meanwhile)
        worker.start()
        worker.join(60)  # a deadlock guard: it would wait for ever on a build in this process
        assert not worker.is_alive()
        assert found == [["late"]]  # the live shard answered while the build was held
        assert build.pid != os.getpid() and build.poll() is None  # still building, elsewhere
        build.send_signal(signal.SIGCONT)
        index.wait_optimized(120)
        assert build.returncode == 0 and not index.building()
        assert index._shard is not live and index._indexed == 12_000  # the built one is live
        assert index.count() == 12_000  # 12,000 + late - removed (tagged: added, purged)
        assert [c.query for c in index.search(unit(1), "tenant:new", "ctx", 0.5, 5)] == ["late"]
        found_q5 = index.search(vectors[5].tolist(), "tenant:2", "ctx", 0.99, 5)
        assert found_q5 == []  # q5 was removed during the build
        assert [c.query for c in index.search(vectors[7].tolist(), "tenant:1", "ctx", 0.99, 1)] == [
            "q7"
        ]
    finally:
        for proc in builds:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
        index.close()
    assert not Path(f"{tmp_path}.build").exists() and not Path(f"{tmp_path}.old").exists()


def test_a_build_is_due_when_the_unindexed_tail_reaches_a_tenth() -> None:
    """Searches scan the entries added since the last build: at 100k entries the tail stays
    under 10,000 (a quarter, 25,000, put the search p99 over 5 ms)."""
    assert not build_due(9_999, 0, 10_000) and build_due(10_000, 0, 10_000)
    assert not build_due(10_000, 100_010, 10_000) and build_due(10_001, 100_010, 10_000)
    assert not build_due(19_999, 200_000, 10_000) and build_due(20_000, 200_000, 10_000)


def test_vectors_of_another_precision_are_never_searched() -> None:
    """int8 and float32 vectors of a text differ (cosine about 0.99): a policy switching
    precision starts a semantic keyspace of its own; float32 keeps the one entries had before
    the precision existed, as do remote embeddings."""
    from thrifty_core.api.cachepolicy import EmbeddingModel
    from thrifty_gateway.services.cache.runtime import semantic_keyspace

    int8 = semantic_keyspace("p/v1", EmbeddingModel())
    exact = semantic_keyspace("p/v1", EmbeddingModel(precision="float32"))
    assert int8 != exact and exact == "p/v1/all-MiniLM-L6-v2/384"
    remote = EmbeddingModel(backend="openai", endpoint="http://e/v1", model="m", dimensions=8)
    assert semantic_keyspace("p/v1", remote) == "p/v1/m/8"


def test_a_large_tenant_finds_its_nearest_entry_after_a_build(tmp_path: Path) -> None:
    """Four tenants with 8,000 entries each, more than a search scans exactly: after the HNSW
    build each search inside one tenant still returns the entry its query was made from. (One
    graph over all entries, searched with the tenant as a filter, found it 65% of the time on
    such vectors; each large partition has a graph of its own now.)"""
    dim, per_tenant, tenants = 384, 8_000, 4
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((per_tenant * tenants, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = EdgeIndex(dim, "ks1", path=str(tmp_path / "shard"), optimize_every=10**9)
    qe = index._qe
    try:
        for start in range(0, len(vectors), 2_000):
            points = [
                qe.Point(
                    i,
                    vectors[i].tolist(),
                    indexed_payload(f"tenant:{i % tenants}", "ctx", f"q{i}", entry(), 600, "ks1"),
                )
                for i in range(start, start + 2_000)
            ]
            index._shard.update(qe.UpdateOperation.upsert_points(points))
        assert index.optimize_in_background()
        index.wait_optimized(300)
        assert index._indexed == len(vectors)
        asked = rng.choice(len(vectors), 100, replace=False)
        found = 0
        for i in asked:
            query = vectors[i] + rng.standard_normal(dim).astype(np.float32) * 0.02
            query /= np.linalg.norm(query)
            hits = index.search(query.tolist(), f"tenant:{i % tenants}", "ctx", 0.5, 5)
            found += bool(hits) and hits[0].query == f"q{i}"
        assert found >= 97
    finally:
        index.close()


def test_expired_entries_among_the_nearest_are_swept_so_searches_query_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An expired entry among the nearest makes a search query twice (without, then with the
    expiry): the search also starts a background sweep, and the next searches query once."""
    index = EdgeIndex(DIM, "ks1")
    queries: list[int] = []
    real_query = index._query

    def counted(*args: Any, **kwargs: Any) -> Any:
        queries.append(1)
        return real_query(*args, **kwargs)

    monkeypatch.setattr(index, "_query", counted)
    try:
        old = entry("a")
        old.created = time.time() - 120
        index.add(key(1), unit(1), "tenant:a", "ctx", "old", old, 60)
        index.add(key(2), unit(1, 0.1), "tenant:a", "ctx", "new", entry("a"), 60)
        assert [c.query for c in index.search(unit(1), "tenant:a", "ctx", 0.5, 5)] == ["new"]
        assert len(queries) == 2
        assert index._expiry.thread is not None
        index._expiry.join(30)
        assert index.count() == 1
        queries.clear()
        assert [c.query for c in index.search(unit(1), "tenant:a", "ctx", 0.5, 5)] == ["new"]
        assert len(queries) == 1
    finally:
        index.close()


def test_a_shard_of_an_earlier_version_loses_its_unused_context_index(tmp_path: Path) -> None:
    """Earlier versions indexed `context`; a payload index makes the build link a graph per
    large value of it, for no search. Opening such a shard drops that index."""
    path = str(tmp_path)
    first = EdgeIndex(DIM, "ks1", path=path)
    qe = first._qe
    first._shard.update(
        qe.UpdateOperation.create_field_index("context", qe.PayloadSchemaType.Keyword)
    )
    assert "context" in first._shard.info().payload_schema
    first.close()
    again = EdgeIndex(DIM, "ks1", path=path)
    schema = again._shard.info().payload_schema
    assert "context" not in schema and "partition" in schema
    again.close()


def test_the_per_partition_layout_starts_at_qdrant_1_17() -> None:
    from thrifty_core.qdrant_layout import layout_supported

    assert [layout_supported(v) for v in ("1.16.3", "1.17.0", "1.18.3", "2.0.0")] == [
        False,
        True,
        True,
        True,
    ]
    assert not layout_supported("0.11.0") and not layout_supported("1.12.4")
    assert layout_supported("v1.18.3") and not layout_supported("v1.12.4")
    assert not any(layout_supported(v) for v in ("", "dev", "1"))  # unknown: the default graph
