"""The rendered gateway config: the schema of `thrifty gateway --config FILE`.

The operator renders it from an `LLMGateway` and the policies it references
(`thrifty_core.render.render_gateway_config`); developers write it by hand
(`examples/local.yaml`). Secrets never appear in it: only the name of an environment variable or
the path of a mounted Secret file (`SecretSource`). Every store has an embedded default (memory),
so a config with no Redis or Qdrant URL runs on a laptop.

Keys are camelCase on the wire (like the custom resources) and snake_case in Python.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .api.base import DNS_LABEL, MODEL_NAME
from .api.batchqueue import BatchQueueSpec
from .api.cachepolicy import CachePolicySpec
from .api.costcontrol import Budget, Hygiene, NetSavings, Tiering
from .api.distilledmodel import Capture
from .api.llmgateway import ModelPrice, RouteTarget, check_tenant_name

log = logging.getLogger(__name__)

SECRETS_ROOT = "/var/run/thrifty/secrets"


class ConfigModel(BaseModel):
    """Base of the config types: camelCase aliases, unknown keys refused, frozen."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class SecretSource(ConfigModel):
    """Where a secret value comes from: an environment variable or a mounted file."""

    env: str | None = Field(default=None, description="Environment variable holding the value.")
    file: str | None = Field(default=None, description="File holding the value (a Secret mount).")

    @model_validator(mode="after")
    def _one_source(self) -> SecretSource:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret source needs exactly one of env or file")
        return self

    def read(self) -> str:
        """Resolve the value (stripped); raises `LookupError` when it is missing."""
        return self._raw().strip()

    def read_store_credential(self) -> str:
        """`read()`, warning when the value had surrounding whitespace: Redis and Qdrant
        compare the same Secret byte for byte (and `kubectl create secret --from-file` keeps
        the file's final newline), so they would refuse the stripped value."""
        raw = self._raw()
        value = raw.strip()
        if value != raw:
            log.warning(
                "store credential %s has surrounding whitespace, removed here; the store "
                "compares it as is: recreate the Secret without it (--from-literal)",
                self.file or f"${self.env}",
            )
        return value

    def _raw(self) -> str:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise LookupError(f"environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            return Path(self.file).read_text(encoding="utf-8")
        except OSError as exc:
            raise LookupError(f"secret file {self.file} cannot be read") from exc


def secret_file(secret: str, key: str) -> SecretSource:
    """The mount path the operator uses for key `key` of Secret `secret`."""
    return SecretSource(file=f"{SECRETS_ROOT}/{secret}/{key}")


class ServerConfig(ConfigModel):
    """Listener and process settings."""

    host: str = Field(default="127.0.0.1", description="Bind address.")
    port: int = Field(default=8080, ge=0, le=65535, description="Bind port.")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Worker processes; more than 1 needs every cache, queue and ledger on Redis "
        "or Qdrant (scale with replicas otherwise).",
    )
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Bodies over this size get 413."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")
    log_format: Literal["json", "text"] = Field(default="json")
    access_log: bool = Field(default=False, description="Log one line per request (no bodies).")
    metrics_need_admin_key: bool = Field(
        default=False,
        description="/metrics answers only with the admin key (Bearer): its series name tenants "
        "and their spend, on the port tenants call. Off by default (Prometheus scrapes without "
        "a key); turn it on where tenants must not see each other's figures, and give the "
        "scraper the admin key.",
    )


class ProviderConfig(ConfigModel):
    """An OpenAI-compatible upstream."""

    name: str = Field(min_length=1, description="Referenced by route targets.")
    type: Literal["openai", "azure", "vllm", "ollama", "openai-compatible"] = "openai-compatible"
    base_url: str = Field(
        pattern=r"^https?://[^\s]+$", description="e.g. https://api.openai.com/v1"
    )
    api_key: SecretSource | None = Field(default=None, description="Provider key source.")
    api_version: str | None = Field(default=None, description="Azure api-version.")
    max_connections: int = Field(default=200, ge=1, description="Pool size towards the provider.")
    supports_batch: bool = True
    prices: list[ModelPrice] = Field(default_factory=list, description="Price overrides.")


class RouteConfig(ConfigModel):
    """A public model name and its ordered upstream targets."""

    name: str = Field(min_length=1, pattern=MODEL_NAME)
    targets: list[RouteTarget] = Field(min_length=1)
    timeout_seconds: float = Field(default=60, gt=0)
    connect_timeout_seconds: float = Field(default=5, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    retry_budget_seconds: float = Field(
        default=30, gt=0, description="Cap on the total time spent waiting between retries."
    )
    open: bool = Field(default=False, description="Serve without a gateway key.")
    deferrable: bool = False
    cache_policy: str | None = Field(default=None, description="Name in cachePolicies.")
    max_tokens_ceiling: int | None = Field(default=None, ge=1)
    tiering: Tiering | None = Field(default=None, description="Cheaper tiers and cascade.")
    hygiene: Hygiene | None = Field(default=None, description="Stop sequences, prefix metric.")
    budget: Budget | None = Field(default=None, description="Spend limit of this route.")


class TenantConfig(ConfigModel):
    """A tenant: SHA-256 hashes of its keys and its limits."""

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    api_key_hashes: list[str] = Field(
        default_factory=list, description="Inline SHA-256 hex hashes (development)."
    )
    api_keys_file: SecretSource | None = Field(
        default=None, description="Secret with one SHA-256 hex hash per line."
    )
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    budget: Budget | None = Field(default=None, description="Spend limit of this tenant.")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        return check_tenant_name(name)

    @model_validator(mode="after")
    def _has_keys(self) -> TenantConfig:
        if not self.api_key_hashes and self.api_keys_file is None:
            raise ValueError(f"tenant {self.name!r} needs apiKeyHashes or apiKeysFile")
        return self


class AdminConfig(ConfigModel):
    """The admin key (hash) for /v1/thrifty admin endpoints."""

    api_key_hashes: list[str] = Field(default_factory=list)
    api_keys_file: SecretSource | None = None


class CacheStoreConfig(ConfigModel):
    """Resolved store endpoints of one cache policy (None: embedded in-memory store)."""

    redis_url: str | None = Field(default=None, description="redis:// URL; None = memory.")
    redis_password: SecretSource | None = None
    qdrant_url: str | None = Field(default=None, description="Qdrant URL; None = embedded.")
    qdrant_api_key: SecretSource | None = None
    embedding_api_key: SecretSource | None = Field(
        default=None, description="API key of a remote (openai backend) embeddings endpoint."
    )
    collection: str = Field(default="thrifty", description="Semantic collection name.")
    keyspace_version: str = Field(default="v1", description="Prefix bumped to purge entries.")
    owner: str = Field(
        default="",
        description="Whose policy this is (the CachePolicy's namespace, as the operator renders "
        "it): part of the keyspace, so that policies of the same name in two namespaces never "
        "share, serve or purge each other's entries on a shared Redis or Qdrant.",
    )


class CachePolicyConfig(ConfigModel):
    """A cache policy as the gateway applies it: the CR spec plus resolved stores."""

    spec: CachePolicySpec = Field(default_factory=CachePolicySpec)
    stores: CacheStoreConfig = Field(default_factory=CacheStoreConfig)


class BatchConfig(ConfigModel):
    """The batch queue serving /v1/files, /v1/batches and deferred requests."""

    name: str = Field(default="default", description="BatchQueue name.")
    spec: BatchQueueSpec = Field(default_factory=BatchQueueSpec)
    redis_url: str | None = Field(default=None, description="redis:// URL; None = memory.")
    redis_password: SecretSource | None = None
    files_dir: str = Field(default="", description="File store directory; '' = a temp dir.")
    coalesce_window_ms: float = Field(
        default=5.0, ge=0, le=1000, description="Embeddings coalescing window; 0 = off."
    )
    coalesce_max_inputs: int = Field(default=256, ge=1, le=2048, description="Inputs per call.")


class StudentConfig(ConfigModel):
    """A distilled student serving (part of) a route."""

    route: str = Field(min_length=1, description="Teacher route the student serves.")
    name: str = Field(min_length=1, description="DistilledModel name.")
    kind: Literal["classifier", "causal-lm"]
    mode: Literal["shadow", "canary", "active"] = "shadow"
    confidence_threshold: float = Field(default=0.7, ge=0, le=1)
    canary_percent: int = Field(default=10, ge=0, le=100)
    evaluation_sample_rate: float = Field(default=0.02, ge=0, le=1)
    timeout_seconds: float = Field(
        default=2.0, gt=0, le=60, description="Wait for the student before the teacher answers."
    )
    labels: list[str] = Field(default_factory=list)
    artifact_path: str | None = Field(default=None, description="Classifier artifact directory.")
    endpoint: str | None = Field(default=None, description="OpenAI-compatible student server.")
    served_model: str | None = Field(default=None, description="Model name at the endpoint.")
    api_key: SecretSource | None = Field(
        default=None,
        description="API key the student endpoint requires (sent as a Bearer token); None = "
        "no key (a local server without --api-key).",
    )
    version: str | None = Field(
        default=None, description="Version to serve; None = the newest promoted one."
    )
    serve: bool = Field(
        default=True,
        description="False: no version serves (the operator found none that passes its gate); "
        "the route stays on the teacher and capture goes on.",
    )
    cost_per_hour: float = Field(default=0.0, ge=0)
    capture: Capture = Field(default_factory=Capture)
    capture_dir: str = Field(default="", description="Where captured pairs go; '' = disabled.")


class LedgerConfig(ConfigModel):
    """Cost ledger settings."""

    redis_url: str | None = Field(
        default=None,
        description="Usage figures, budget state and tenant rate limits shared by every "
        "replica; None = memory (each replica counts and limits on its own).",
    )
    redis_password: SecretSource | None = Field(default=None, description="Redis password.")
    retention_hours: int = Field(
        default=24 * 14, ge=1, description="Hours of usage buckets kept (memory and Redis)."
    )
    gateway: str = Field(
        default="",
        # namespace/name (Kubernetes names: never a ':' nor another key's scope word)
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$",
        description="Whose figures these are (the LLMGateway's namespace/name, as the operator "
        "renders it): part of the usage, budget and rate-limit keys, so that gateways sharing "
        "one Redis never count, charge or limit each other's tenants of the same name.",
    )


class GatewayConfig(ConfigModel):
    """Everything one gateway process needs."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    providers: list[ProviderConfig] = Field(min_length=1)
    routes: list[RouteConfig] = Field(min_length=1)
    tenants: list[TenantConfig] = Field(default_factory=list)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    metrics_keys: AdminConfig = Field(
        default_factory=AdminConfig,
        description="Keys (SHA-256 hashes) that may read /metrics and nothing else: a scraper's "
        "credential for a gateway with server.metricsNeedAdminKey.",
    )
    prices: list[ModelPrice] = Field(
        default_factory=list, description="Catalog overrides for every provider."
    )
    cache_policies: dict[str, CachePolicyConfig] = Field(default_factory=dict)
    default_cache_policy: str | None = Field(default=None, description="Name in cachePolicies.")
    batch: BatchConfig | None = None
    students: list[StudentConfig] = Field(default_factory=list)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    net_savings: NetSavings | None = Field(default=None, description="Running-cost prices.")

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        providers = {p.name for p in self.providers}
        if len(providers) != len(self.providers):
            raise ValueError("provider names must be unique")
        routes = {r.name for r in self.routes}
        if len(routes) != len(self.routes):
            raise ValueError("route names must be unique")
        for route in self.routes:
            for target in route.targets:
                if target.provider not in providers:
                    raise ValueError(
                        f"route {route.name!r} targets unknown provider {target.provider!r}"
                    )
            for tier in route.tiering.tiers if route.tiering else ():
                for tier_target in tier.targets:
                    if tier_target.provider not in providers:
                        raise ValueError(
                            f"tier {tier.name!r} of route {route.name!r} targets unknown "
                            f"provider {tier_target.provider!r}"
                        )
            if route.cache_policy and route.cache_policy not in self.cache_policies:
                raise ValueError(
                    f"route {route.name!r} uses unknown cache policy {route.cache_policy!r}"
                )
        if self.default_cache_policy and self.default_cache_policy not in self.cache_policies:
            raise ValueError(f"unknown default cache policy {self.default_cache_policy!r}")
        for student in self.students:
            if student.route not in routes:
                raise ValueError(f"student {student.name!r} serves unknown route {student.route!r}")
        tenants = [t.name for t in self.tenants]
        if len(set(tenants)) != len(tenants):
            raise ValueError("tenant names must be unique")
        if self.server.workers > 1:
            in_memory = self._memory_state()
            if in_memory:
                raise ValueError(
                    f"server.workers > 1 needs shared stores: each worker process would keep "
                    f"its own {', '.join(in_memory)} (a purge or a usage report would see one "
                    "worker's). Set the Redis/Qdrant URLs, or run one worker per pod."
                )
        return self

    def _memory_state(self) -> list[str]:
        """The state this config keeps in process memory rather than in a shared store."""
        found: list[str] = []
        for name, policy in sorted(self.cache_policies.items()):
            spec, stores = policy.spec, policy.stores
            if spec.exact.enabled and not stores.redis_url:
                found.append(f"exact cache of policy {name!r}")
            if spec.semantic.enabled and not stores.qdrant_url:
                found.append(f"semantic cache of policy {name!r}")
        if self.batch is not None and not self.batch.redis_url:
            found.append("batch queue")
        if not self.ledger.redis_url:
            found.append("ledger (usage, budgets, rate limits)")
        return found

    def route(self, name: str) -> RouteConfig | None:
        return next((r for r in self.routes if r.name == name), None)

    def cache_policy_for(self, route: str) -> CachePolicyConfig | None:
        """The cache policy that applies to `route` (its own, else the default)."""
        cfg = self.route(route)
        name = (cfg.cache_policy if cfg else None) or self.default_cache_policy
        return self.cache_policies.get(name) if name else None


def parse_config(data: dict[str, Any]) -> GatewayConfig:
    return GatewayConfig.model_validate(data)


CONFIG_KEY = "gateway.yaml"


def read_config_data(path: str | Path) -> dict[str, Any]:
    """The raw config mapping in a YAML (or JSON) file.

    The file is either the config itself or a ConfigMap that holds it under `gateway.yaml`, the
    form the operator renders; so `examples/local.yaml` can be run by `thrifty gateway` and also
    sit in `examples/` where `kubectl apply -f examples/` accepts it.
    """
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict) and data.get("kind") == "ConfigMap":
        inner = (data.get("data") or {}).get(CONFIG_KEY)
        if not isinstance(inner, str):
            raise ValueError(f"{path}: the ConfigMap has no data.{CONFIG_KEY}")
        data = yaml.safe_load(inner)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config must be a mapping")
    return data


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a config file (plain or wrapped in a ConfigMap)."""
    return parse_config(read_config_data(path))


def dump_config(config: GatewayConfig) -> str:
    """YAML of the config (camelCase keys, defaults omitted), as the operator writes it."""
    data = config.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    # The C dumper is about ten times faster; the operator renders on every reconcile.
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(data, Dumper=dumper, sort_keys=True)
