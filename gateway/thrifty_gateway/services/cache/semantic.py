"""Semantic indexes: vectors of final user turns with their answers, in Qdrant.

Two implementations of `SemanticIndex`, chosen from the store config:

* `EdgeIndex` (the embedded default): Qdrant's in-process engine (`qdrant-edge-py`), the same
  Rust segment code as the server, so filtered search stays sub-millisecond at 100k entries
  (qdrant-client's own local mode evaluates filters in Python and scans every point).
* `ServerIndex`: a Qdrant server through `qdrant-client` (clusters).

Every search carries a hard `must` filter on one indexed tenant field, `partition`, holding the
tenant scope (the tenant, or `shared`) and the exact `context` hash (model, system prompt,
earlier turns, tools, sampling fields) together (`partition_of`), and serves no expired entry;
both fields are checked again on every point returned (`matching`). Both indexes keep a graph
per large partition rather than one over all entries (`thrifty_core.qdrant_layout`). Calls are
blocking; the stage runs them in a thread.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from thrifty_core.qdrant_layout import (
    HNSW_M,
    LAYOUT_SINCE,
    PARTITION_FIELD,
    PAYLOAD_M,
    hnsw_layout,
    layout_supported,
)

from .entry import CachedAnswer
from .selector import Selector

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A stored final user turn close to the query, with its answer."""

    score: float
    query: str
    entry: CachedAnswer


class SemanticIndex(Protocol):
    def search(
        self, vector: Sequence[float], scope: str, context: str, threshold: float, limit: int
    ) -> list[Candidate]: ...

    def add(
        self,
        key: str,
        vector: Sequence[float],
        scope: str,
        context: str,
        query: str,
        entry: CachedAnswer,
        ttl: int,
    ) -> None: ...

    def remove(self, key: str) -> None:
        """Delete the entry stored under exact key `key`, if any."""
        ...

    def purge(self, selector: Selector) -> int: ...

    def count(self) -> int: ...

    def close(self) -> None: ...


def point_id(key: str) -> str:
    """A UUID derived from the exact key: re-storing the same request overwrites it."""
    return str(uuid.UUID(hex=key[:32]))


def payload_of(
    scope: str, context: str, query: str, entry: CachedAnswer, ttl: int, keyspace: str
) -> dict[str, Any]:
    return {
        "scope": scope,
        "context": context,
        "keyspace": keyspace,
        "tenant": entry.tenant,
        "route": entry.route,
        "model": entry.model,
        "tags": list(entry.tags),
        "created": entry.created,
        "expires": entry.created + ttl,
        "query": query,
        "answer": orjson.dumps(entry.body).decode(),
        **({"usage": entry.usage} if entry.usage is not None else {}),
        **({"gateway": entry.gateway} if entry.gateway else {}),  # absent: purged by any
    }


# Payload fields both indexes index without graphs (`enable_hnsw=False`): they serve purges,
# expiry and the size cap, never a search (searches filter on the partition, the tenant field).
KEYWORD_FIELDS = ("scope", "keyspace", "tenant", "gateway", "route", "model", "tags")
TIME_FIELDS = ("expires", "created")


def partition_of(scope: str, context: str) -> str:
    """The one search key of both indexes: the tenant scope and the context together.

    A search filtered on two keyword fields checks the second on every point the first selects,
    which doubled the scan of the unindexed tail; one field selects them at once. `context` is a
    fixed-length hex digest, so the value is unambiguous: equal partitions mean equal scopes
    (`matching` also checks both on every point a search returns).
    """
    return f"{context}|{scope}"


def indexed_payload(
    scope: str, context: str, query: str, entry: CachedAnswer, ttl: int, keyspace: str
) -> dict[str, Any]:
    """A point's payload as both indexes store it: `payload_of` plus its `partition_of`
    (points of versions before it have none and are dropped)."""
    payload = payload_of(scope, context, query, entry, ttl, keyspace)
    payload[PARTITION_FIELD] = partition_of(scope, context)
    return payload


def matching(points: Sequence[Any], scope: str, context: str) -> list[Candidate]:
    """The candidates of the points a search returned, but for any of another scope or context:
    the partition filter already excludes them, this is defence in depth (a forged or corrupt
    point is never served)."""
    out = []
    for point in points:
        payload = point.payload or {}
        if payload.get("scope") != scope or payload.get("context") != context:
            log.error("semantic index returned an entry of another scope; dropped")
            continue
        out.append(candidate_of(point.score, payload))
    return out


def candidate_of(score: float, payload: dict[str, Any]) -> Candidate:
    entry = CachedAnswer(
        body=orjson.loads(payload["answer"]),
        tenant=payload["tenant"],
        route=payload["route"],
        model=payload["model"],
        created=float(payload["created"]),
        tags=tuple(payload.get("tags") or ()),
        usage=payload.get("usage"),
        gateway=payload.get("gateway") or "",
    )
    return Candidate(score=float(score), query=payload["query"], entry=entry)


def edge_config(qe: Any, dim: int, search_threads: int = 1) -> Any:
    """The embedded shard's configuration (the serving process and the index build agree).

    Every search stays inside one partition (`partition_of`), so there is no graph over all
    entries (`m=0`): each partition large enough to need one gets its own (`payload_m`), and
    smaller ones are scanned exactly. One graph over all entries, searched with the partition
    as a filter, missed the nearest entry of a tenant holding a quarter of them about one
    search in four on real embeddings (bench/RESULTS.md: "Search recall").
    """
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Dot),
        max_search_threads=search_threads,
        payload_memory=qe.Memory.Cached,
        hnsw_config=qe.HnswIndexConfig(
            m=HNSW_M,
            payload_m=PAYLOAD_M,
            ef_construct=64,
            full_scan_threshold=10_000,
            max_indexing_threads=1,
        ),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=10_000),
    )


BUILD_TIMEOUT = 3600.0  # seconds for one HNSW build in its subprocess
# A build is due when the entries added since the last one reach a tenth of those it indexed
# (and at least `optimize_every`): searches scan the unindexed tail, about 0.13 ms per 1,000
# entries of one partition on one core, so at 100k entries in one partition the tail stays
# under 10,000 (search p99 about 3.5 ms: bench/RESULTS.md), while builds of a growing index
# still grow further apart.
TAIL_SHARE = 10


def build_due(unindexed: int, indexed: int, every: int) -> bool:
    """Whether the unindexed tail is long enough for a new HNSW build."""
    return unindexed >= max(every, indexed // TAIL_SHARE)


class Periodic:
    """`work` in a background thread, one run at a time and at most every `every` seconds
    (monotonic; the first run from `first_at`), started by whoever calls `run_when_due`. A
    failure is logged by its type only, unless `quiet()` says it is expected (a closed index)."""

    def __init__(
        self,
        work: Callable[[], object],
        every: float,
        name: str,
        *,
        first_at: float = 0.0,
        quiet: Callable[[], bool] = lambda: False,
    ) -> None:
        self._work = work
        self._every = every
        self._name = name
        self._quiet = quiet
        self._next = first_at
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None  # the last run started

    def run_when_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            running = self.thread is not None and self.thread.is_alive()
            if running or now < self._next:
                return
            self._next = now + self._every
            self.thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self.thread.start()

    def _run(self) -> None:
        try:
            self._work()
        except Exception as exc:
            if not self._quiet():
                log.warning("%s failed: %s", self._name, type(exc).__name__)

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout)


class EdgeIndex:
    """The embedded index: a qdrant-edge shard in a directory (a temp dir by default).

    The edge engine builds its HNSW index only when asked (`optimize`), and holds the GIL while
    it does: seconds at 10k entries, a minute at 100k, during which the whole gateway (exact
    hits, health checks, streams) would stand still. So the build runs in a subprocess, on a
    copy of the shard: the copy is taken under the lock (a flush and a file copy), updates made
    meanwhile are journaled, and the built shard replaces the live one under the lock with the
    journal replayed on it. Searches keep running on the live shard (unindexed segments are
    scanned: fast for a tenant's own entries, slower only for one huge scope) until the swap.
    The flush, the close of the old shard and the load of the built one still hold the GIL in
    this process: at 100k entries about 0.13 s (10,000 entries new since the last build) and
    0.7 s (bench/RESULTS.md).
    """

    EXPIRE_EVERY = 60.0  # seconds between two sweeps of expired entries, at most

    def __init__(
        self,
        dim: int,
        keyspace: str,
        path: str | None = None,
        search_threads: int = 1,
        optimize_every: int = 10_000,
        max_entries: int | None = None,
    ) -> None:
        import qdrant_edge as qe

        self._qe = qe
        self._dim = dim
        self._search_threads = search_threads
        self._optimize_every = optimize_every
        self._max_entries = max_entries
        self._unindexed = 0
        self._indexed = 0  # entries at the last build: builds grow further apart as it grows
        self._optimizer: threading.Thread | None = None
        # Expired entries among the nearest cost each search a second query: a search that
        # meets one drops them all in the background, rather than at the next build (which a
        # quiet gateway may not reach for hours).
        self._expiry = Periodic(
            self.expire, self.EXPIRE_EVERY, "thrifty-qdrant-expire", quiet=lambda: self._closed
        )
        self._build: subprocess.Popen[bytes] | None = None
        self._journal: list[Any] | None = None  # updates since the build's copy was taken
        self._closed = False
        self._keyspace = keyspace
        self._own_dir = path is None
        self._path = path or tempfile.mkdtemp(prefix="thrifty-qdrant-")
        self._staging = f"{self._path}.build"  # the copy a build works on
        self._config = edge_config(qe, dim, search_threads)
        try:
            self._shard = qe.EdgeShard.load(self._path, self._config)
        except Exception:
            self._shard = qe.EdgeShard.create(self._path, self._config)
        self._lock = threading.Lock()
        # Searches filter on the partition: it is the tenant field, and the build links each
        # partition too large to scan into an HNSW graph of its own. The other indexes serve
        # purges, expiry and the size cap only; graphs for their values (a time range of
        # `created`, one route ...) would lengthen every build and serve no search. `context`
        # needs no index: no filter names it alone.
        index = qe.UpdateOperation.create_field_index
        self._apply(index(PARTITION_FIELD, qe.KeywordIndexParams(is_tenant=True)))
        for name in KEYWORD_FIELDS:
            self._apply(index(name, qe.KeywordIndexParams(enable_hnsw=False)))
        for name in TIME_FIELDS:
            self._apply(index(name, qe.FloatIndexParams(enable_hnsw=False)))
        # A shard from an earlier version has one: it would only lengthen its builds.
        self._apply(qe.UpdateOperation.delete_field_index("context"))
        # A new keyspace version makes older entries unreachable, and so does a missing
        # partition (entries stored before it existed): drop them.
        stale = qe.FieldCondition("keyspace", match=qe.MatchValue(keyspace))
        self._delete(qe.Filter(must_not=[stale]))
        self._delete(qe.Filter(must=[qe.IsEmptyCondition(PARTITION_FIELD)]))

    def _apply(self, op: Any) -> None:
        """Apply an update to the live shard (journaled while a build runs)."""
        with self._lock:
            self._apply_locked(op)

    def _apply_locked(self, op: Any) -> None:
        self._shard.update(op)
        if self._journal is not None:
            self._journal.append(op)

    def _delete(self, flt: Any) -> None:
        self._apply(self._qe.UpdateOperation.delete_points_by_filter(flt))

    def search(
        self, vector: Sequence[float], scope: str, context: str, threshold: float, limit: int
    ) -> list[Candidate]:
        """The nearest live entries of `scope` and `context`.

        One filter condition, the partition (see `partition_of`): an expiry condition would be
        checked on every point of an unindexed tail too. Expired entries (left until the next
        `maintain`) are rare among the nearest, so they are dropped here, and only when one was
        among them is the search run again with the expiry in the filter, to fill the places.
        """
        now = time.time()
        partition = partition_of(scope, context)
        points = self._query(vector, partition, threshold, limit)
        live = [p for p in points if float((p.payload or {}).get("expires", 0.0)) > now]
        if len(live) < len(points):
            live = self._query(vector, partition, threshold, limit, alive_at=now)
            if not self._closed:
                self._expiry.run_when_due()
        return matching(live, scope, context)

    def _query(
        self,
        vector: Sequence[float],
        partition: str,
        threshold: float,
        limit: int,
        alive_at: float | None = None,
    ) -> Any:
        """The nearest points of one partition (and, given `alive_at`, not expired then)."""
        qe = self._qe
        must = [qe.FieldCondition(PARTITION_FIELD, match=qe.MatchValue(partition))]
        if alive_at is not None:
            must.append(qe.FieldCondition("expires", range=qe.RangeFloat(gt=alive_at)))
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(list(vector)),
            filter=qe.Filter(must=must),
            with_payload=True,
            score_threshold=threshold,
        )
        with self._lock:
            return self._shard.query(request)

    def add(
        self,
        key: str,
        vector: Sequence[float],
        scope: str,
        context: str,
        query: str,
        entry: CachedAnswer,
        ttl: int,
    ) -> None:
        qe = self._qe
        payload = indexed_payload(scope, context, query, entry, ttl, self._keyspace)
        point = qe.Point(point_id(key), list(vector), payload)
        self._apply(qe.UpdateOperation.upsert_points([point]))
        with self._lock:
            self._unindexed += 1
            due = build_due(self._unindexed, self._indexed, self._optimize_every)
        if due:
            self.optimize_in_background()

    def optimize_in_background(self) -> bool:
        """Build the HNSW index in a subprocess and swap it in (see the class docstring);
        searches and updates keep running meanwhile. False when a build is running."""
        with self._lock:
            if self._closed or self.building():
                return False
            self._unindexed = 0
            self._optimizer = threading.Thread(
                target=self._optimize, name="thrifty-qdrant-optimize", daemon=True
            )
            self._optimizer.start()
        return True

    def maintain(self) -> int:
        """Drop expired entries, then the oldest ones above `max_entries`; returns how many
        were dropped beyond expiry."""
        qe = self._qe
        self.expire()
        if self._max_entries is None:
            return 0
        excess = self.count() - self._max_entries
        if excess <= 0:
            return 0
        order = qe.OrderBy("created", qe.Direction.Asc)
        with self._lock:
            oldest, _ = self._shard.scroll(
                qe.ScrollRequest(limit=excess, order_by=order, with_payload=False)
            )
        self._apply(qe.UpdateOperation.delete_points([p.id for p in oldest]))
        return len(oldest)

    def _optimize(self) -> None:
        started = time.monotonic()
        staging = self._staging
        try:
            self.maintain()
            with self._lock:
                self._shard.flush()
                shutil.rmtree(staging, ignore_errors=True)
                shutil.copytree(self._path, staging)
                self._journal = []
            self._run_build(staging)
            self._swap(staging)
            self._warm_up()
        except Exception as exc:
            with self._lock:
                self._journal = None
            shutil.rmtree(staging, ignore_errors=True)
            if not self._closed:
                log.warning("semantic index build failed: %s", type(exc).__name__)
            return
        log.info("semantic index built in %.1fs", time.monotonic() - started)

    def _run_build(self, staging: str) -> None:
        """`python -m ...edge_build` on the copy: the build holds that process's GIL only."""
        cmd = [sys.executable, "-m", "thrifty_gateway.services.cache.edge_build", staging]
        cmd += [str(self._dim), str(self._search_threads)]
        with self._lock:
            if self._closed:
                raise RuntimeError("closed")
            self._build = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = self._build.communicate(timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._build.kill()
            self._build.communicate()
            raise
        finally:
            code, self._build = self._build.returncode, None
        if code != 0:
            raise RuntimeError(f"index build exited {code}: {err.decode(errors='replace')[-300:]}")

    def _warm_up(self, searches: int = 64) -> None:
        """A freshly loaded shard pages its index in on first use (the first searches after a
        build at 100k entries took 8 to 10 ms, then under 1 ms): touch it before requests do,
        with searches inside the partitions of some stored entries, near their vectors."""
        qe = self._qe
        with self._lock:
            if self._closed:
                return
            points, _ = self._shard.scroll(
                qe.ScrollRequest(limit=searches, with_payload=True, with_vector=True)
            )
        for point in points:
            if self._closed:
                return
            partition = (point.payload or {}).get(PARTITION_FIELD)
            vector = point.vector  # a plain list of floats here (no named or multi vectors)
            if isinstance(partition, str) and isinstance(vector, list) and vector:
                if isinstance(vector[0], float):  # narrows to list[float] for the type checker
                    self._query(vector, partition, 0.0, 5)

    def _swap(self, staging: str) -> None:
        """Replace the live shard by the built copy, with the updates made since it was taken."""
        qe = self._qe
        retired = f"{self._path}.old"
        with self._lock:
            if self._closed:
                raise RuntimeError("closed")
            journal, self._journal = self._journal or [], None
            self._shard.close()
            shutil.rmtree(retired, ignore_errors=True)
            os.rename(self._path, retired)
            try:
                os.rename(staging, self._path)
                shard = qe.EdgeShard.load(self._path, self._config)
                for op in journal:
                    shard.update(op)
            except Exception:
                # Back to the live shard as it was (the journal was applied to it already).
                shutil.rmtree(self._path, ignore_errors=True)
                os.rename(retired, self._path)
                self._shard = qe.EdgeShard.load(self._path, self._config)
                raise
            self._shard = shard
            self._indexed = int(shard.count(qe.CountRequest(exact=True)))
        shutil.rmtree(retired, ignore_errors=True)

    def building(self) -> bool:
        """Whether a background build (or its swap) is running."""
        optimizer = self._optimizer
        return optimizer is not None and optimizer.is_alive()

    def wait_optimized(self, timeout: float | None = None) -> None:
        optimizer = self._optimizer
        if optimizer is not None:
            optimizer.join(timeout)

    def remove(self, key: str) -> None:
        self._apply(self._qe.UpdateOperation.delete_points([point_id(key)]))

    def purge(self, selector: Selector) -> int:
        qe = self._qe
        must: list[Any] = []
        for name in ("tenant", "route", "model"):
            value = getattr(selector, name)
            if value is not None:
                must.append(qe.FieldCondition(name, match=qe.MatchValue(value)))
        if selector.tag is not None:
            must.append(qe.FieldCondition("tags", match=qe.MatchValue(selector.tag)))
        if selector.older_than_seconds is not None:
            cutoff = time.time() - selector.older_than_seconds
            must.append(qe.FieldCondition("created", range=qe.RangeFloat(lte=cutoff)))
        if selector.gateway is not None:  # its own, or labelled with none (`Selector.gateway`)
            mine = qe.FieldCondition("gateway", match=qe.MatchValue(selector.gateway))
            must.append(qe.Filter(should=[mine, qe.IsEmptyCondition("gateway")]))
        if not must:  # everything
            must_not = [qe.FieldCondition("scope", match=qe.MatchValue(""))]
            flt = qe.Filter(must_not=must_not)
        else:
            flt = qe.Filter(must=must)
        with self._lock:  # one hold: an add in between would make the count wrong
            before = self._shard.count(qe.CountRequest(exact=True, filter=flt))
            self._apply_locked(qe.UpdateOperation.delete_points_by_filter(flt))
        return int(before)

    def expire(self) -> None:
        """Drop expired entries (searches already ignore them)."""
        qe = self._qe
        self._delete(
            qe.Filter(must=[qe.FieldCondition("expires", range=qe.RangeFloat(lte=time.time()))])
        )

    def count(self) -> int:
        with self._lock:
            return int(self._shard.count(self._qe.CountRequest(exact=True)))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._build is not None:
                self._build.kill()  # a build in progress is abandoned
        self.wait_optimized(timeout=60)
        self._expiry.join(timeout=60)
        with self._lock:
            self._shard.close()
        shutil.rmtree(self._staging, ignore_errors=True)
        if self._own_dir:
            shutil.rmtree(self._path, ignore_errors=True)


class ServerIndex:
    """A Qdrant server collection through qdrant-client (or its `:memory:` local mode).

    The collection is set up (created if absent, payload indexes, switched to a graph per
    partition, this policy's entries of older keyspaces or without a partition dropped)
    on first use rather than at start: a gateway starts while Qdrant is
    down or still starting, and its semantic lookups bypass the cache (errors counted by the
    caller) until a setup succeeds, tried again at most every `SETUP_RETRY` seconds.

    Several policies may share a collection: every point carries its `policy` and `keyspace`,
    and set-up, purges and counts touch only this policy's current keyspace. Expired points
    (of any policy) are deleted, and this keyspace is trimmed to `max_entries` (oldest first),
    in a background sweep at most every `MAINTAIN_EVERY` seconds, started by a write.
    """

    SETUP_RETRY = 5.0
    MAINTAIN_EVERY = 60.0

    def __init__(
        self,
        url: str,
        collection: str,
        dim: int,
        keyspace: str,
        *,
        policy: str = "",
        max_entries: int | None = None,
        api_key: str | None = None,
        timeout: float = 0.5,
    ) -> None:
        from qdrant_client import QdrantClient, models

        self._m = models
        self._keyspace = keyspace
        self._policy = policy
        self._max_entries = max_entries
        self._collection = collection
        self._sweep = Periodic(
            self.maintain,
            self.MAINTAIN_EVERY,
            "thrifty-qdrant-sweep",
            first_at=time.monotonic() + self.MAINTAIN_EVERY,
        )
        self._dim = dim
        self._local = url == ":memory:"
        if self._local:
            self._client = QdrantClient(location=":memory:")
        else:
            # No start-up version check: it runs in a thread that only warns, also when
            # Qdrant is merely down; the pinned client's calls report a real mismatch.
            self._client = QdrantClient(
                url=url,
                api_key=api_key,
                timeout=max(1, int(timeout)),
                check_compatibility=False,
            )
        self._setup_lock = threading.Lock()
        self._ready = False
        self._retry_at = 0.0
        try:
            self._ensure()
        except Exception as exc:  # unreachable, refused, slow: the first lookup tries again
            log.warning(
                "qdrant collection %s not ready; semantic lookups bypass the cache until it is: %s",
                collection,
                type(exc).__name__,
            )

    def _ensure(self) -> None:
        """Set the collection up once; raise (the lookup bypasses) while that fails."""
        if self._ready:
            return
        with self._setup_lock:
            if self._ready:
                return
            now = time.monotonic()
            if now < self._retry_at:
                raise ConnectionError("qdrant setup failed recently; retrying soon")
            self._retry_at = now + self.SETUP_RETRY
            self._setup()
            self._ready = True
            log.info("qdrant collection %s ready", self._collection)

    def _setup(self) -> None:
        models, collection = self._m, self._collection
        # The local mode has no payload indexes (and warns) nor graphs.
        laid_out = not self._local and self._layout_supported()
        if not self._client.collection_exists(collection):
            self._client.create_collection(
                collection,
                vectors_config=models.VectorParams(size=self._dim, distance=models.Distance.DOT),
                hnsw_config=models.HnswConfigDiff(**hnsw_layout()) if laid_out else None,
            )
        config = self._client.get_collection(collection).config
        size = getattr(config.params.vectors, "size", None)
        if size != self._dim:
            # Made for another embedding model: the policy's collection Job recreates it at
            # the new size; until then this gateway bypasses the semantic cache.
            raise ValueError(f"collection {collection} has vector size {size}, want {self._dim}")
        if not self._local:
            # Indexes first: a switch of the graph starts the server's rebuild at once, with
            # the indexes' graph settings as they are then.
            self._create_indexes(collection)
        if laid_out:
            self._ensure_layout(config.hnsw_config)
        mine = models.FieldCondition(key="policy", match=models.MatchValue(value=self._policy))
        # Entries of an older keyspace are unreachable, and so are entries without a partition
        # (written before it existed): drop them.
        self._client.delete(
            collection,
            points_selector=models.Filter(must=[mine], must_not=[self._mine()]),
        )
        unpartitioned = models.IsEmptyCondition(is_empty=models.PayloadField(key=PARTITION_FIELD))
        self._client.delete(collection, points_selector=models.Filter(must=[mine, unpartitioned]))

    def _layout_supported(self) -> bool:
        """Whether the server can keep graphs off the other indexes (`layout_supported`);
        on an older one the collection keeps Qdrant's default graph, said once per set-up."""
        version = self._client.info().version
        if layout_supported(version):
            return True
        log.warning(
            "qdrant %s cannot keep graphs off payload indexes (needs %d.%d or later): "
            "collection %s keeps one graph over all entries, and a tenant holding more than "
            "about an eighth of a segment may miss its nearest entries",
            version,
            *LAYOUT_SINCE,
            self._collection,
        )
        return False

    def _ensure_layout(self, hnsw: Any) -> None:
        """Switch a collection made with one graph over all entries (before partitions, or by
        hand) to a graph per partition; the server rebuilds its index in the background and
        searches keep working meanwhile. Every writer agrees, so this happens once."""
        want = hnsw_layout()
        if hnsw.m == want["m"] and hnsw.payload_m == want["payload_m"]:
            return
        log.warning(
            "qdrant collection %s has hnsw m=%s payload_m=%s; switching it to m=%d payload_m=%d "
            "(a graph per partition; the server reindexes in the background)",
            self._collection,
            hnsw.m,
            hnsw.payload_m,
            want["m"],
            want["payload_m"],
        )
        self._client.update_collection(self._collection, hnsw_config=self._m.HnswConfigDiff(**want))

    def _mine(self) -> Any:
        return self._m.FieldCondition(
            key="keyspace", match=self._m.MatchValue(value=self._keyspace)
        )

    def _create_indexes(self, collection: str) -> None:
        """The partition is the tenant field, the only one linked into graphs (see
        `thrifty_core.qdrant_layout`); the others serve purges, expiry, the size cap and
        gateways of earlier versions (`scope` and `context`) and get no graphs of their own,
        which would lengthen every index build and serve no search."""
        models = self._m
        keyword, number = models.KeywordIndexType.KEYWORD, models.FloatIndexType.FLOAT
        self._client.create_payload_index(
            collection, PARTITION_FIELD, models.KeywordIndexParams(type=keyword, is_tenant=True)
        )
        # `context` (searched on by gateways of earlier versions) and `policy` (set-up): a
        # server collection may be shared by several policies and gateway versions.
        for name in ("context", "policy", *KEYWORD_FIELDS):
            self._client.create_payload_index(
                collection, name, models.KeywordIndexParams(type=keyword, enable_hnsw=False)
            )
        for name in TIME_FIELDS:
            self._client.create_payload_index(
                collection, name, models.FloatIndexParams(type=number, enable_hnsw=False)
            )

    def search(
        self, vector: Sequence[float], scope: str, context: str, threshold: float, limit: int
    ) -> list[Candidate]:
        self._ensure()
        m = self._m
        partition = partition_of(scope, context)
        flt = m.Filter(
            must=[
                m.FieldCondition(key=PARTITION_FIELD, match=m.MatchValue(value=partition)),
                m.FieldCondition(key="expires", range=m.Range(gt=time.time())),
            ]
        )
        result = self._client.query_points(
            self._collection,
            query=list(vector),
            query_filter=flt,
            limit=limit,
            with_payload=True,
            score_threshold=threshold,
        )
        return matching(result.points, scope, context)

    def add(
        self,
        key: str,
        vector: Sequence[float],
        scope: str,
        context: str,
        query: str,
        entry: CachedAnswer,
        ttl: int,
    ) -> None:
        self._ensure()
        payload = indexed_payload(scope, context, query, entry, ttl, self._keyspace)
        payload["policy"] = self._policy
        self._client.upsert(
            self._collection,
            points=[self._m.PointStruct(id=point_id(key), vector=list(vector), payload=payload)],
        )
        self._sweep.run_when_due()

    def maintain(self) -> int:
        """Delete expired points, then this keyspace's oldest above `max_entries`; returns
        how many were deleted beyond expiry."""
        self._ensure()
        m = self._m
        expired = m.Filter(must=[m.FieldCondition(key="expires", range=m.Range(lte=time.time()))])
        self._client.delete(self._collection, points_selector=expired)
        if self._max_entries is None:
            return 0
        excess = self.count() - self._max_entries
        if excess <= 0:
            return 0
        oldest, _ = self._client.scroll(
            self._collection,
            scroll_filter=m.Filter(must=[self._mine()]),
            limit=excess,
            order_by=m.OrderBy(key="created", direction=m.Direction.ASC),
            with_payload=False,
        )
        self._client.delete(
            self._collection, points_selector=m.PointIdsList(points=[p.id for p in oldest])
        )
        return len(oldest)

    def remove(self, key: str) -> None:
        self._ensure()
        self._client.delete(
            self._collection, points_selector=self._m.PointIdsList(points=[point_id(key)])
        )

    def purge(self, selector: Selector) -> int:
        self._ensure()
        m = self._m
        must: list[Any] = [self._mine()]
        for name in ("tenant", "route", "model"):
            value = getattr(selector, name)
            if value is not None:
                must.append(m.FieldCondition(key=name, match=m.MatchValue(value=value)))
        if selector.tag is not None:
            must.append(m.FieldCondition(key="tags", match=m.MatchValue(value=selector.tag)))
        if selector.older_than_seconds is not None:
            cutoff = time.time() - selector.older_than_seconds
            must.append(m.FieldCondition(key="created", range=m.Range(lte=cutoff)))
        if selector.gateway is not None:  # its own, or labelled with none (`Selector.gateway`)
            mine = m.FieldCondition(key="gateway", match=m.MatchValue(value=selector.gateway))
            unlabelled = m.IsEmptyCondition(is_empty=m.PayloadField(key="gateway"))
            must.append(m.Filter(should=[mine, unlabelled]))
        flt = m.Filter(must=must)
        count = self._client.count(self._collection, count_filter=flt, exact=True).count
        self._client.delete(self._collection, points_selector=flt)
        return int(count)

    def count(self) -> int:
        self._ensure()
        flt = self._m.Filter(must=[self._mine()])
        return int(self._client.count(self._collection, count_filter=flt, exact=True).count)

    def close(self) -> None:
        self._client.close()
