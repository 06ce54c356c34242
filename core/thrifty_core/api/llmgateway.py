"""LLMGateway: the OpenAI-compatible gateway, its providers, routes, tenants and policy refs."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .base import (
    HTTP_URL,
    MODEL_NAME,
    ApiModel,
    CommonStatus,
    LocalObjectRef,
    Name,
    PrinterColumn,
    Resource,
    Resources,
    SecretKeyRef,
    cel,
    list_map,
    with_cel,
)
from .costcontrol import Budget, Hygiene, NetSavings, Tiering

ROUTE_PROVIDERS_EXIST = (
    "self.routes.all(r, r.targets.all(t, self.providers.exists(p, p.name == t.provider)))"
)
BUDGET_SHARING = (
    "Replicas share the spend through the Redis of the gateway's cache policy or batch queue; "
    "without either, each replica keeps the spend in memory and enforces the whole limit on "
    "its own (N replicas may spend up to N times it), and a restart forgets it."
)


class ModelPrice(ApiModel):
    """Prices of one model in US dollars per million tokens."""

    model: str = Field(
        min_length=1, max_length=128, pattern=MODEL_NAME, description="Provider model name."
    )
    input_per_m_tok: float = Field(ge=0, le=10000, description="Input price, USD per 1M tokens.")
    cached_input_per_m_tok: float | None = Field(
        default=None,
        ge=0,
        le=10000,
        description="Price of provider-cached input tokens, USD per 1M (default: input price).",
    )
    output_per_m_tok: float = Field(ge=0, le=10000, description="Output price, USD per 1M tokens.")
    batch_discount: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Fraction of the normal price charged through the provider's Batch API.",
    )


class Provider(ApiModel):
    """An OpenAI-compatible upstream (OpenAI, Azure-style, vLLM, Ollama, ...)."""

    name: Name = Field(description="Provider name, referenced by route targets.")
    type: Literal["openai", "azure", "vllm", "ollama", "openai-compatible"] = Field(
        default="openai-compatible", description="Flavour of the OpenAI-compatible API."
    )
    base_url: str = Field(
        max_length=2048,
        pattern=HTTP_URL,
        description="Base URL of the API, e.g. https://api.openai.com/v1.",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the provider API key (mounted as a file, never inlined).",
    )
    api_version: str | None = Field(
        default=None, max_length=32, description="api-version query parameter for Azure."
    )
    max_connections: int = Field(
        default=200, ge=1, le=10000, description="Connection pool size towards this provider."
    )
    supports_batch: bool = Field(
        default=True, description="Whether the provider offers the Files + Batches API."
    )
    prices: list[ModelPrice] = Field(
        default_factory=list,
        max_length=256,
        description="Price overrides for this provider's models (the built-in catalog applies "
        "otherwise).",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["model"],
        },
    )


class RouteTarget(ApiModel):
    """One (provider, model) pair a route can send traffic to."""

    provider: Name = Field(description="Name of a provider declared in spec.providers.")
    model: str = Field(
        min_length=1, max_length=128, pattern=MODEL_NAME, description="Model name at the provider."
    )


class Route(ApiModel):
    """A public model name and the ordered upstream targets that serve it."""

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=MODEL_NAME,
        description="Public model name clients send in the `model` field.",
    )
    targets: list[RouteTarget] = Field(
        min_length=1,
        max_length=8,
        description="Ordered fallback chain: the first healthy target is used.",
    )
    timeout_seconds: float = Field(
        default=60, gt=0, le=3600, description="Per-attempt upstream timeout."
    )
    max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries per target on 429/5xx/connection errors."
    )
    open: bool = Field(
        default=False, description="Serve this route without a gateway API key (explicit opt-in)."
    )
    deferrable: bool = Field(
        default=False,
        description="Allow clients to defer requests to the batch queue (x-thrifty-defer header).",
    )
    cache_policy_ref: LocalObjectRef | None = Field(
        default=None, description="CachePolicy for this route (overrides spec.cachePolicyRef)."
    )
    max_tokens_ceiling: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Upper bound applied to max_tokens."
    )
    tiering: Tiering | None = Field(
        default=None, description="Cheaper tiers for easy requests, with an optional cascade."
    )
    hygiene: Hygiene | None = Field(
        default=None, description="Default stop sequences and the repeated-prefix metric."
    )
    budget: Budget | None = Field(
        default=None, description="Spend limit of this route. " + BUDGET_SHARING
    )


# Identities the gateway gives callers without a tenant key: key-less callers of open routes act
# as `anonymous`, the admin key as `admin`. A real tenant with either name would share their
# cache entries, batches and files, so the names are reserved.
RESERVED_TENANT_NAMES: tuple[str, ...] = ("anonymous", "admin")


def check_tenant_name(name: str) -> str:
    if name in RESERVED_TENANT_NAMES:
        raise ValueError(f"tenant name {name!r} is reserved ({', '.join(RESERVED_TENANT_NAMES)})")
    return name


class Tenant(ApiModel):
    """A tenant: a set of gateway API keys with its own limits and cache scope."""

    model_config = with_cel(
        cel(
            "!(self.name in " + str(list(RESERVED_TENANT_NAMES)) + ")",
            "tenant names anonymous and admin are reserved",
            ".name",
        )
    )

    name: Name = Field(description="Tenant name; scopes caches, budgets and usage.")
    api_keys_secret_ref: SecretKeyRef = Field(
        description="Secret key whose value lists SHA-256 hashes of this tenant's API keys, one "
        "per line (`thrifty keys hash` makes them)."
    )
    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Requests per minute (token bucket, burst one minute's worth), one budget "
        "for all replicas when the gateway has a shared Redis (its default cache policy's or "
        "its batch queue's), else per replica; unset means none.",
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Tokens per minute, debited with each answer's usage and shared like "
        "requestsPerMinute; unset means none.",
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        return check_tenant_name(name)

    budget: Budget | None = Field(
        default=None, description="Spend limit of this tenant. " + BUDGET_SHARING
    )


class Autoscaling(ApiModel):
    """HorizontalPodAutoscaler settings for the gateway."""

    enabled: bool = Field(default=False, description="Create an HPA for the gateway.")
    min_replicas: int = Field(default=2, ge=1, le=1000, description="Lower bound of replicas.")
    max_replicas: int = Field(default=10, ge=1, le=1000, description="Upper bound of replicas.")
    target_cpu_utilization: int = Field(
        default=70, ge=1, le=100, description="Average CPU utilization target, percent."
    )

    model_config = with_cel(
        cel("self.minReplicas <= self.maxReplicas", "minReplicas must be <= maxReplicas")
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must be <= maxReplicas")
        return self


class DisruptionBudget(ApiModel):
    """PodDisruptionBudget settings for the gateway."""

    enabled: bool = Field(default=False, description="Create a PodDisruptionBudget.")
    min_available: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Pods kept during drains; below replicas (autoscaling.minReplicas with "
        "autoscaling), else no pod could ever be evicted and node drains would block.",
    )


AUTOSCALING_NEEDS_CPU = (
    "autoscaling needs resources.requests.cpu: the HPA scales on CPU use as a share of it"
)
PDB_ALLOWS_A_DISRUPTION = (
    "podDisruptionBudget.minAvailable must be below replicas (autoscaling.minReplicas when "
    "autoscaling is enabled): a budget that keeps every gateway pod never lets one be evicted, "
    "and node drains and upgrades wait for ever"
)
# Scaled to zero (no autoscaling, replicas 0) there is no pod to evict: nothing is blocked.
PDB_RULE = (
    "!self.podDisruptionBudget.enabled"
    " || self.podDisruptionBudget.minAvailable < (self.autoscaling.enabled"
    " ? self.autoscaling.minReplicas : self.replicas)"
    " || (!self.autoscaling.enabled && self.replicas == 0)"
)


def pdb_allows_a_disruption(replicas: int, autoscaling: Autoscaling, pdb: DisruptionBudget) -> bool:
    """PDB_RULE in Python: the budget lets at least one gateway pod be evicted (or is off)."""
    if not pdb.enabled or (not autoscaling.enabled and replicas == 0):
        return True
    pods = autoscaling.min_replicas if autoscaling.enabled else replicas
    return pdb.min_available < pods


class LLMGatewaySpec(ApiModel):
    """Desired state of a gateway."""

    replicas: int = Field(default=2, ge=0, le=1000, description="Gateway pods (without HPA).")
    image: str | None = Field(
        default=None, max_length=512, description="Gateway image override (default: operator's)."
    )
    resources: Resources = Field(default_factory=Resources, description="Gateway pod resources.")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description="HPA settings.")
    pod_disruption_budget: DisruptionBudget = Field(
        default_factory=DisruptionBudget, description="PDB settings."
    )
    providers: list[Provider] = Field(
        min_length=1,
        max_length=16,
        description="Upstream OpenAI-compatible providers.",
        json_schema_extra=list_map("name"),
    )
    routes: list[Route] = Field(
        min_length=1,
        max_length=64,
        description="Public model names and their upstream targets.",
        json_schema_extra=list_map("name"),
    )
    tenants: list[Tenant] = Field(
        default_factory=list,
        max_length=256,
        description="Tenants and their API keys; every non-open route needs a tenant key.",
        json_schema_extra=list_map("name"),
    )
    admin_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the SHA-256 hash of the admin API key."
    )
    cache_policy_ref: LocalObjectRef | None = Field(
        default=None, description="Default CachePolicy for every route."
    )
    batch_queue_ref: LocalObjectRef | None = Field(
        default=None, description="BatchQueue that serves /v1/batches and deferred requests."
    )
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="Request bodies over this size are refused with 413.",
    )
    metrics_need_admin_key: bool = Field(
        default=False,
        description="/metrics answers only with the admin key or the metrics key: its series "
        "name tenants and their spend, on the port tenants call.",
    )
    metrics_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the SHA-256 hash of a key that may read /metrics and "
        "nothing else: give its plaintext to the scraper instead of the admin key.",
    )
    net_savings: NetSavings | None = Field(
        default=None,
        description="Running-cost prices and workloads; savings are then also reported net.",
    )

    model_config = with_cel(
        cel(
            ROUTE_PROVIDERS_EXIST,
            "every route target must name a provider in spec.providers",
            ".routes",
        ),
        cel(
            "!self.autoscaling.enabled || (has(self.resources) && has(self.resources.requests)"
            " && 'cpu' in self.resources.requests)",
            AUTOSCALING_NEEDS_CPU,
            ".resources",
        ),
        cel(PDB_RULE, PDB_ALLOWS_A_DISRUPTION, ".podDisruptionBudget.minAvailable"),
    )

    @model_validator(mode="after")
    def _cpu_for_the_hpa(self) -> LLMGatewaySpec:
        if self.autoscaling.enabled and "cpu" not in self.resources.requests:
            raise ValueError(AUTOSCALING_NEEDS_CPU)
        return self

    @model_validator(mode="after")
    def _pdb_allows_a_disruption(self) -> LLMGatewaySpec:
        if not pdb_allows_a_disruption(self.replicas, self.autoscaling, self.pod_disruption_budget):
            raise ValueError(PDB_ALLOWS_A_DISRUPTION)
        return self

    @model_validator(mode="after")
    def _targets_known(self) -> LLMGatewaySpec:
        names = {p.name for p in self.providers}
        for route in self.routes:
            for target in route.targets:
                if target.provider not in names:
                    raise ValueError(
                        f"route {route.name!r} targets unknown provider {target.provider!r}"
                    )
            for tier in route.tiering.tiers if route.tiering else ():
                for tier_target in tier.targets:
                    if tier_target.provider not in names:
                        raise ValueError(
                            f"tier {tier.name!r} of route {route.name!r} targets unknown "
                            f"provider {tier_target.provider!r}"
                        )
        return self


class LLMGatewayStatus(CommonStatus):
    """Observed state of a gateway."""

    replicas: int = Field(default=0, ge=0, description="Gateway pods that exist.")
    ready_replicas: int = Field(default=0, ge=0, description="Gateway pods that are ready.")
    config_hash: str = Field(default="", description="Hash of the rendered gateway config.")
    endpoint: str = Field(default="", description="In-cluster URL of the gateway Service.")
    routes: list[str] = Field(
        default_factory=list, max_length=64, description="Routes served, as rendered."
    )


class LLMGateway(Resource):
    """An OpenAI-compatible gateway that applies Thrifty's cost levers."""

    kind_name: ClassVar[str] = "LLMGateway"
    plural: ClassVar[str] = "llmgateways"
    singular: ClassVar[str] = "llmgateway"
    short_names: ClassVar[tuple[str, ...]] = ("llmgw", "gw")
    description: ClassVar[str] = (
        "LLMGateway declares an OpenAI-compatible gateway: providers, routes, tenants and the "
        "cache and batch policies it applies."
    )
    extra_columns: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn(name="Replicas", type="integer", json_path=".status.readyReplicas"),
        PrinterColumn(name="Endpoint", type="string", json_path=".status.endpoint", priority=1),
    )

    kind: Literal["LLMGateway"] = Field(default="LLMGateway", description="Resource kind.")
    spec: LLMGatewaySpec = Field(description="Desired state.")
    status: LLMGatewayStatus | None = Field(default=None, description="Observed state.")
