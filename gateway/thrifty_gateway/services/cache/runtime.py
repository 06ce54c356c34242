"""One cache policy as the gateway runs it: its stores, embedder, verifier and keyspace."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from thrifty_core.api.cachepolicy import CachePolicySpec, EmbeddingModel, PairVerifier
from thrifty_core.config import CachePolicyConfig
from thrifty_core.embedding import Embedder, PairScoring, create_embedder, create_pair_scorer
from thrifty_core.embedding.weights import BertFiles, load_minilm

from .entry import Codec
from .exact import ExactStore, MemoryExactStore, RedisExactStore, StoreUnavailable
from .keys import policy_ident, policy_keyspace
from .semantic import EdgeIndex, SemanticIndex, ServerIndex

log = logging.getLogger(__name__)


@dataclass
class PolicyRuntime:
    name: str
    spec: CachePolicySpec
    keyspace: str
    exact: ExactStore | None
    semantic: SemanticIndex | None
    embedder: Embedder | None
    verifier: PairScoring | None = None
    # Whose purge fence guards the policy's stores against purges started meanwhile: the exact
    # layer's store; for a policy without one on a Qdrant server, a Redis store used for its
    # fence only (any replica may purge the shared index); None: this process's purge count.
    fences: ExactStore | None = None
    # After a semantic lookup or store fails (a slow or dead Qdrant, a dead embeddings
    # endpoint), the layer is bypassed until then (monotonic clock): one timeout, not one per
    # request.
    semantic_down_until: float = 0.0
    # An embedded semantic index beside a Redis store that replicas share (the exact layer's,
    # or the fence's): the purges other replicas run reach this index through that store's
    # purge log (`CacheStage._caught_up`), applied up to the fence `applied`.
    purge_log: RedisExactStore | None = None
    applied: str | None = None
    catching_up: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        if self.fences is None:
            self.fences = self.exact

    async def aclose(self) -> None:
        if self.exact is not None:
            await self.exact.aclose()
        if self.fences is not None and self.fences is not self.exact:
            await self.fences.aclose()
        if self.semantic is not None:
            await asyncio.to_thread(self.semantic.close)


def _secret(source: Any) -> str | None:
    return source.read() if source is not None else None


def _store_secret(source: Any) -> str | None:
    return source.read_store_credential() if source is not None else None


@dataclass
class SharedModels:
    """Embedders and pair verifiers, shared by every policy that declares the same one."""

    embedders: dict[str, Embedder] = field(default_factory=dict)
    verifiers: dict[str, PairScoring] = field(default_factory=dict)
    minilm: BertFiles | None = None  # the packaged encoder, read once for both

    async def _minilm(self) -> BertFiles:
        if self.minilm is None:
            self.minilm = await asyncio.to_thread(load_minilm)
        return self.minilm

    async def embedder(self, spec: EmbeddingModel, api_key: str | None = None) -> Embedder:
        # Policies share an embedder only when they would call the same model with the same key
        # (the key enters the dictionary key as a digest only).
        key_digest = hashlib.sha256(api_key.encode()).hexdigest() if api_key else ""
        fingerprint = f"{spec.model_dump_json()}/{key_digest}"
        if fingerprint not in self.embedders:
            files = await self._minilm() if spec.backend == "local" else None
            self.embedders[fingerprint] = await asyncio.to_thread(
                partial(create_embedder, spec, files=files, api_key=api_key)
            )
        return self.embedders[fingerprint]

    async def verifier(self, spec: PairVerifier) -> PairScoring:
        key = f"{spec.model}/{spec.precision}"
        if key not in self.verifiers:
            files = await self._minilm()
            self.verifiers[key] = await asyncio.to_thread(
                partial(create_pair_scorer, spec.model, precision=spec.precision, files=files)
            )
        return self.verifiers[key]


def semantic_keyspace(keyspace: str, emb: EmbeddingModel) -> str:
    """The semantic layer's keyspace: vectors of one model, size and precision only (int8 and
    float32 vectors of a text differ: entries are searched only by queries embedded like them).
    float32 keeps the keyspace entries had before the precision existed."""
    base = f"{keyspace}/{emb.model}/{emb.dimensions}"
    return f"{base}/int8" if emb.backend == "local" and emb.precision == "int8" else base


async def open_policy(name: str, policy: CachePolicyConfig, models: SharedModels) -> PolicyRuntime:
    """Open the stores of a policy and load (or share) its embedder and verifier."""
    spec, stores = policy.spec, policy.stores
    ident = policy_ident(name, stores.owner)
    keyspace = policy_keyspace(name, stores.owner, stores.keyspace_version)
    exact: ExactStore | None = None
    if spec.exact.enabled:
        codec = Codec(spec.exact.compress)
        if stores.redis_url:
            redis_store = RedisExactStore(
                stores.redis_url,
                f"thrifty:cache:{keyspace}:",
                codec,
                spec.exact.max_entry_bytes,
                password=_store_secret(stores.redis_password),
            )
            await redis_store.eviction_policy()  # a warning for an allkeys-* Redis
            exact = redis_store
        else:
            exact = MemoryExactStore(spec.exact.max_entries, codec, spec.exact.max_entry_bytes)
    semantic: SemanticIndex | None = None
    embedder: Embedder | None = None
    verifier: PairScoring | None = None
    if spec.semantic.enabled and spec.semantic.embedding is not None:
        emb = spec.semantic.embedding
        embedder = await models.embedder(emb, _secret(stores.embedding_api_key))
        guard = spec.semantic.guard
        if guard.enabled and guard.verifier.enabled:
            verifier = await models.verifier(guard.verifier)
        sem_keyspace = semantic_keyspace(keyspace, emb)
        if stores.qdrant_url:
            semantic = await asyncio.to_thread(
                ServerIndex,
                stores.qdrant_url,
                stores.collection,
                emb.dimensions,
                sem_keyspace,
                policy=ident,
                max_entries=spec.semantic.max_entries,
                api_key=_store_secret(stores.qdrant_api_key),
            )
        else:
            semantic = await asyncio.to_thread(
                EdgeIndex,
                emb.dimensions,
                sem_keyspace,
                max_entries=spec.semantic.max_entries,
                optimize_every=min(10_000, spec.semantic.max_entries),
            )
    log.info(
        "cache policy %s: exact=%s semantic=%s verifier=%s",
        name,
        type(exact).__name__ if exact is not None else "off",  # an empty store is falsy
        type(semantic).__name__ if semantic is not None else "off",
        verifier.name if verifier else "off",
    )
    fences: ExactStore | None = None
    # A policy without an exact layer keeps its fence in its Redis when it has one: replicas
    # share a Qdrant server's index, and an embedded index follows the others' purges
    # (`purge_log`).
    if exact is None and semantic is not None and stores.redis_url:
        fences = RedisExactStore(
            stores.redis_url,
            f"thrifty:cache:{keyspace}:",
            Codec(spec.exact.compress),
            spec.exact.max_entry_bytes,
            password=_store_secret(stores.redis_password),
        )
    runtime = PolicyRuntime(name, spec, keyspace, exact, semantic, embedder, verifier, fences)
    shared = exact if exact is not None else fences
    if isinstance(shared, RedisExactStore) and isinstance(semantic, EdgeIndex):
        runtime.purge_log = shared
        try:  # the index is new and empty: no purge before now concerns it
            runtime.applied = await shared.fence()
        except StoreUnavailable:
            pass  # (set at the first fence read: nothing is stored without one)
    return runtime
