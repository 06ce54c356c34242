"""CachePolicy: exact and semantic cache layers, their stores, eligibility and guard."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .base import (
    HTTP_URL,
    MODEL_NAME,
    QUANTITY,
    REDIS_URL,
    ApiModel,
    CommonStatus,
    PrinterColumn,
    Resource,
    Resources,
    SecretKeyRef,
    cel,
    with_cel,
)

GuardCheck = Literal["numbers", "negation", "antonyms", "entities", "length"]
GUARD_CHECKS: tuple[GuardCheck, ...] = ("numbers", "negation", "antonyms", "entities", "length")


class ExactLayer(ApiModel):
    """Exact cache: a SHA-256 of every answer-changing field, stored in Redis."""

    enabled: bool = Field(default=True, description="Serve identical requests from cache.")
    ttl_seconds: int = Field(
        default=86400, ge=1, le=31_536_000, description="Time to live of an entry."
    )
    max_entry_bytes: int = Field(
        default=1_048_576, ge=1024, le=67_108_864, description="Larger answers are not stored."
    )
    max_entries: int = Field(
        default=100_000,
        ge=1,
        le=100_000_000,
        description="Entry cap of the embedded store. Redis evicts least recently used "
        "entries at its maxmemory: for a managed Redis, 3/4 of stores.redis.resources.limits."
        "memory, else 1 GiB.",
    )
    compress: bool = Field(default=True, description="Compress stored answers (zstd).")


class EmbeddingModel(ApiModel):
    """The model that embeds the final user turn for semantic lookup."""

    backend: Literal["local", "openai"] = Field(
        default="local",
        description="local runs the model on CPU in the gateway; openai calls an "
        "OpenAI-compatible embeddings endpoint.",
    )
    model: str = Field(
        default="all-MiniLM-L6-v2",
        min_length=1,
        max_length=128,
        pattern=MODEL_NAME,
        description="Embedding model name.",
    )
    dimensions: int = Field(default=384, ge=8, le=8192, description="Vector size.")
    precision: Precision = Field(
        default="int8",
        description="backend local: int8 runs the dense layers after the first in int8, one "
        "text per run (about half the time; a few percent fewer semantic hits); float32 the "
        "float graph. Switching drops the semantic entries embedded at the other precision.",
    )
    endpoint: str | None = Field(
        default=None, max_length=2048, pattern=HTTP_URL, description="Base URL for backend openai."
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="API key for the remote embeddings endpoint."
    )

    model_config = with_cel(
        cel(
            "self.backend != 'openai' || has(self.endpoint)",
            "an openai embedding backend needs an endpoint",
            ".endpoint",
        )
    )


PairModel = Literal["minilm-pair-qqp"]
# How a local model runs: int8 dense layers after the first (7-bit weights, one text or pair per
# run) or the float graph (bench/RESULTS.md, Cache).
Precision = Literal["int8", "float32"]


class PairVerifier(ApiModel):
    """A cross-encoder that reads the query and a candidate together and scores the match."""

    enabled: bool = Field(
        default=True,
        description="Score candidates that pass the checks; serve only those scoring minScore.",
    )
    model: PairModel = Field(
        default="minilm-pair-qqp",
        description="Packaged verifier model (all-MiniLM-L6-v2 with a duplicate-question "
        "adapter, run on CPU in the gateway).",
    )
    min_score: float = Field(
        default=0.995,
        ge=0.0,
        le=1.0,
        description="Minimum verifier score (0 to 1) for a candidate to be served.",
    )
    precision: Precision = Field(
        default="int8",
        description="int8: the dense layers after the first in int8, each candidate scored in "
        "its own run (about 40% faster; its score never depends on other "
        "candidates); float32: the exact float graph (a few more hits, bench/RESULTS.md).",
    )
    max_candidates: int = Field(
        default=1,
        ge=1,
        le=5,
        description="How many candidates (nearest first, among those passing the checks) the "
        "verifier judges per lookup; the first scoring minScore is served. 1 bounds a lookup "
        "to one verifier pass: a candidate further down rarely wins (bench/RESULTS.md).",
    )


class Guard(ApiModel):
    """Verification of semantic candidates before they are served."""

    enabled: bool = Field(
        default=True,
        description="Verify candidate hits before serving (false also turns the verifier off).",
    )
    checks: list[GuardCheck] = Field(
        default_factory=lambda: list(GUARD_CHECKS),
        max_length=8,
        description="Checks a candidate must pass; any mismatch rejects the hit.",
    )
    verifier: PairVerifier = Field(
        default_factory=PairVerifier,
        description="Learned pair verifier, run after the checks on the remaining candidates.",
    )


class SemanticLayer(ApiModel):
    """Semantic cache: a similar final user turn under identical context."""

    enabled: bool = Field(default=False, description="Serve paraphrases from cache.")
    threshold: float = Field(
        default=0.90, ge=0.5, le=1.0, description="Minimum cosine similarity for a candidate."
    )
    ttl_seconds: int = Field(
        default=86400,
        ge=1,
        le=31_536_000,
        description="Time to live of an entry; at most exact.ttlSeconds when the exact layer "
        "is on (an answer is never reused longer than the identical request may reuse it).",
    )
    max_entries: int = Field(
        default=1_000_000, ge=1, le=100_000_000, description="Entries kept per collection."
    )
    embedding: EmbeddingModel | None = Field(
        default=None, description="Embedding model; required when the layer is enabled."
    )
    guard: Guard = Field(default_factory=Guard, description="Wrong-hit guard.")
    lookup_timeout_ms: int = Field(
        default=250,
        ge=10,
        le=10_000,
        description="Time a lookup (embedding + search + guard) may take before the request "
        "goes on without it (a bypass). Raise it for a remote embeddings backend (they take "
        "100 to 400 ms). A failed or timed-out lookup or store bypasses the layer for 2 s.",
    )


class Eligibility(ApiModel):
    """Which requests and answers may be cached."""

    max_temperature: float = Field(
        default=1.0,
        ge=0,
        le=2,
        description="Requests sampled hotter than this are not cached (a request without "
        "temperature counts as 1.0, the provider's default).",
    )
    cache_tool_calls: bool = Field(
        default=False, description="Cache answers that call tools or requests with tool results."
    )
    cache_multiple_choices: bool = Field(default=False, description="Cache requests with n > 1.")
    cache_streaming: bool = Field(default=True, description="Assemble and store streamed answers.")


class StoreEndpoint(ApiModel):
    """A managed (operator-run) or external store."""

    managed: bool = Field(default=True, description="Let the operator run the store.")
    url: str | None = Field(
        default=None, max_length=2048, description="URL of an external store (managed: false)."
    )
    password_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret key with the store's password (Redis) or API key (Qdrant). Without one, a"
            " managed store gets a generated Secret <policy>-redis-auth / <policy>-qdrant-auth,"
            " owned by the resource. The store compares the value byte for byte: create it"
            " without a final newline (kubectl create secret generic --from-literal)."
        ),
    )
    storage: str = Field(
        default="1Gi", pattern=QUANTITY, description="PVC size of a managed store."
    )
    storage_class_name: str | None = Field(
        default=None, max_length=253, description="StorageClass of a managed store's PVC."
    )
    image: str | None = Field(default=None, max_length=512, description="Managed store image.")
    resources: Resources = Field(default_factory=Resources, description="Managed store resources.")

    model_config = with_cel(
        cel(
            "self.managed || has(self.url)",
            "an external store (managed: false) needs a url",
            ".url",
        ),
        cel("!self.managed || !has(self.url)", "a managed store takes no url", ".url"),
    )


class RedisStore(StoreEndpoint):
    """Redis for the exact cache, the batch queue and budgets."""

    url: str | None = Field(
        default=None, max_length=2048, pattern=REDIS_URL, description="redis:// or rediss:// URL."
    )


class QdrantStore(StoreEndpoint):
    """Qdrant for semantic vectors."""

    url: str | None = Field(
        default=None, max_length=2048, pattern=HTTP_URL, description="http(s) URL of Qdrant."
    )
    collection: str = Field(
        default="",
        max_length=128,
        pattern=r"^[A-Za-z0-9_-]*$",
        description="Collection name (default: thrifty-<namespace>-<policy>).",
    )
    upgrade: Literal["Automatic", "Manual"] = Field(
        default="Automatic",
        description="How a managed Qdrant follows the operator's default image when image is "
        "unset. Automatic: a Qdrant that runs an older release is moved one minor version at a "
        "time, to the last patch of each (Qdrant's storage is compatible across one minor "
        "version only), each step once the previous one has rolled out and is ready; a newer "
        "release is never downgraded. Manual: it keeps the image it runs until image is set.",
    )


class Stores(ApiModel):
    """Where cached data lives."""

    model_config = with_cel(
        cel(
            "self.qdrant.storage == oldSelf.qdrant.storage"
            " && has(self.qdrant.storageClassName) == has(oldSelf.qdrant.storageClassName)"
            " && (!has(self.qdrant.storageClassName)"
            " || self.qdrant.storageClassName == oldSelf.qdrant.storageClassName)",
            "stores.qdrant.storage and storageClassName cannot change (a StatefulSet's volume "
            "claim template is immutable): expand the PVC itself, or create a new policy",
            ".qdrant.storage",
        )
    )

    redis: RedisStore = Field(default_factory=RedisStore, description="Exact layer store.")
    qdrant: QdrantStore = Field(default_factory=QdrantStore, description="Semantic layer store.")


class CachePolicySpec(ApiModel):
    """Desired caching behaviour."""

    exact: ExactLayer = Field(default_factory=ExactLayer, description="Exact layer.")
    semantic: SemanticLayer = Field(default_factory=SemanticLayer, description="Semantic layer.")
    scope: Literal["tenant", "shared"] = Field(
        default="tenant",
        description="tenant isolates every entry to its tenant; shared lets tenants share answers "
        "(opt-in, for public data only).",
    )
    eligibility: Eligibility = Field(default_factory=Eligibility, description="Eligibility rules.")
    stores: Stores = Field(default_factory=Stores, description="Backing stores.")
    deletion_policy: Literal["Retain", "Delete"] = Field(
        default="Retain",
        description="Delete removes the policy's semantic data when the policy is deleted: its "
        "collection, or only its entries while other policies' entries remain in the collection "
        "(a collection several policies name).",
    )

    model_config = with_cel(
        cel(
            "!self.semantic.enabled || has(self.semantic.embedding)",
            "a semantic layer needs an embedding model",
            ".semantic.embedding",
        )
    )

    @model_validator(mode="after")
    def _semantic_needs_embedding(self) -> CachePolicySpec:
        if self.semantic.enabled and self.semantic.embedding is None:
            raise ValueError("a semantic layer needs an embedding model (semantic.embedding)")
        return self


class CachePolicyStatus(CommonStatus):
    """Observed state of a cache policy."""

    keyspace_version: str = Field(
        default="", description="Version of the cache keyspace; changes purge old entries."
    )
    collection: str = Field(default="", description="Semantic collection in use.")
    collection_job: str = Field(
        default="",
        description="The completed Job that created the collection; the operator deletes the "
        "previous one when a new pod template (operator image, API key) replaces it.",
    )
    redis_url: str = Field(default="", description="Redis endpoint in use (no credentials).")
    qdrant_url: str = Field(default="", description="Qdrant endpoint in use (no credentials).")
    qdrant_image: str = Field(
        default="",
        description="Image of the managed Qdrant. An operator upgrade never jumps it to a new "
        "default: its storage moves one minor version at a time (spec.stores.qdrant.upgrade).",
    )


class CachePolicy(Resource):
    """Caching policy referenced by gateways and routes."""

    kind_name: ClassVar[str] = "CachePolicy"
    plural: ClassVar[str] = "cachepolicies"
    singular: ClassVar[str] = "cachepolicy"
    short_names: ClassVar[tuple[str, ...]] = ("cpol",)
    description: ClassVar[str] = (
        "CachePolicy declares exact and semantic caching for the gateways that reference it."
    )
    extra_columns: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn(name="Semantic", type="boolean", json_path=".spec.semantic.enabled"),
        PrinterColumn(name="Threshold", type="number", json_path=".spec.semantic.threshold"),
    )

    kind: Literal["CachePolicy"] = Field(default="CachePolicy", description="Resource kind.")
    spec: CachePolicySpec = Field(default_factory=CachePolicySpec, description="Desired state.")
    status: CachePolicyStatus | None = Field(default=None, description="Observed state.")
