"""Cost control settings of an `LLMGateway`: tiered routing, output/prompt hygiene, budgets and
the running-cost prices that turn gross savings into net savings.

Used by the CR (`spec.routes[].tiering`, `.hygiene`, `.budget`, `spec.tenants[].budget`,
`spec.netSavings`) and, unchanged, by the rendered gateway config.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .base import MODEL_NAME, ApiModel, Name, cel, list_map, with_cel

DEFAULT_REFUSALS: tuple[str, ...] = (
    r"(?i)\bI(?:'m| am) (?:sorry|afraid),? (?:but )?I (?:can(?:'|no)t|am unable)",
    r"(?i)\bI can(?:'|no)t (?:help|assist) with (?:that|this)",
    r"(?i)\bas an AI(?: language)? model\b",
)

Keyword = Annotated[str, Field(min_length=1, max_length=128)]
Pattern = Annotated[str, Field(min_length=1, max_length=512)]


class TierTarget(ApiModel):
    """One (provider, model) pair a tier sends traffic to."""

    provider: Name = Field(description="Name of a provider declared in spec.providers.")
    model: str = Field(
        min_length=1,
        max_length=128,
        pattern=MODEL_NAME,
        description="Model name at the provider.",
    )


class TierRule(ApiModel):
    """Conditions on request features. Every condition that is set must hold (AND); a rule
    with no condition matches every request."""

    max_prompt_tokens: int | None = Field(
        default=None, ge=0, le=10_000_000, description="Prompt at most this many tokens (~4 ch)."
    )
    min_prompt_tokens: int | None = Field(
        default=None, ge=0, le=10_000_000, description="Prompt at least this many tokens."
    )
    has_tools: bool | None = Field(
        default=None, description="Request offers tools (true) or none (false)."
    )
    has_images: bool | None = Field(
        default=None, description="Request carries image parts (true) or none (false)."
    )
    has_response_format: bool | None = Field(
        default=None, description="Request asks for JSON output (response_format) or not."
    )
    metadata: dict[str, Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict,
        description="Tags that must be equal: the request's `metadata` object or the "
        "`x-thrifty-tags: k=v,k2=v2` header.",
    )
    keywords_any: list[Keyword] = Field(
        default_factory=list,
        max_length=64,
        description="At least one of these words/phrases (case-insensitive) in the user turns.",
    )
    keywords_none: list[Keyword] = Field(
        default_factory=list,
        max_length=64,
        description="None of these words/phrases (case-insensitive) in the user turns.",
    )
    max_difficulty: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Difficulty score from the classifier at most this (needs classifier).",
    )


class Tier(ApiModel):
    """A cheaper tier of a route: its targets and the rules that send a request to it."""

    name: Name = Field(description="Tier name, recorded in the ledger and x-thrifty-tier.")
    targets: list[TierTarget] = Field(
        min_length=1, max_length=8, description="Ordered fallback chain of this tier."
    )
    rules: list[TierRule] = Field(
        default_factory=list,
        max_length=32,
        description="A request goes to this tier when any rule matches (OR); no rules: every "
        "request matches.",
    )


class Cascade(ApiModel):
    """Try the chosen cheap tier first; escalate to the next tier when the answer fails a check.
    Applies to non-streaming chat requests."""

    enabled: bool = Field(default=False, description="Turn the cascade on.")
    min_mean_logprob: float | None = Field(
        default=None,
        ge=-100,
        le=0,
        description="Escalate when the mean token log-probability is below this (the cheap "
        "tier is asked for logprobs).",
    )
    check_json: bool = Field(
        default=True,
        description="Escalate when response_format asks for JSON and the answer does not parse.",
    )
    refusal_patterns: list[Pattern] = Field(
        default_factory=lambda: list(DEFAULT_REFUSALS),
        max_length=32,
        description="Regular expressions; an answer matching one is a refusal (escalate).",
    )
    escalate_on_truncation: bool = Field(
        default=False, description="Escalate when the cheap answer stopped at max_tokens."
    )


class DifficultyClassifier(ApiModel):
    """A classifier student (distill pipeline, kind classifier) whose labels rate difficulty."""

    artifact_path: str = Field(
        min_length=1, max_length=1024, description="Directory of the classifier's versions."
    )
    hard_labels: list[Keyword] = Field(
        default_factory=lambda: ["hard"],
        min_length=1,
        max_length=16,
        description="Labels that mean hard; difficulty is their total probability.",
    )
    version: str | None = Field(
        default=None, max_length=128, description="Pinned version (default: newest promoted)."
    )


class Tiering(ApiModel):
    """Tiered model routing for one route: ordered tiers (cheap -> strong) before the route's
    own targets, which are the strongest tier."""

    tiers: list[Tier] = Field(
        min_length=1,
        max_length=8,
        description="Cheaper tiers, cheapest first. The first tier whose rules match is used; "
        "when none matches the route's own targets are.",
        json_schema_extra=list_map("name"),
    )
    cascade: Cascade = Field(default_factory=Cascade, description="Answer checks and escalation.")
    classifier: DifficultyClassifier | None = Field(
        default=None, description="Optional difficulty classifier used by maxDifficulty rules."
    )

    @model_validator(mode="after")
    def _unique(self) -> Tiering:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError("tier names must be unique")
        if "route" in names:
            raise ValueError("tier name 'route' is reserved for the route's own targets")
        return self


class PrefixWatch(ApiModel):
    """Counts prompts that resend a long identical prefix (candidates for provider prompt
    caching)."""

    enabled: bool = Field(default=True, description="Watch prompt prefixes.")
    min_prefix_tokens: int = Field(
        default=1024, ge=16, le=1_000_000, description="Prefix length that counts as long."
    )
    window: int = Field(
        default=4096, ge=16, le=1_000_000, description="Distinct prefixes remembered."
    )


class Hygiene(ApiModel):
    """Output and prompt hygiene for one route (max_tokens: route.maxTokensCeiling)."""

    default_stop: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list,
        max_length=4,
        description="Stop sequences added when the request sets none.",
    )
    prefix_watch: PrefixWatch = Field(
        default_factory=PrefixWatch, description="Repeated long prefix metric."
    )


class Budget(ApiModel):
    """Money a tenant or route may spend per period. Soft: downgrade to the cheapest tier, a
    header and a metric. Hard: 429 with Retry-After to the end of the period."""

    period: Literal["day", "month"] = Field(default="month", description="Budget period (UTC).")
    soft_limit_usd: float | None = Field(
        default=None, ge=0, le=1e9, description="Above this spend, downgrade and warn."
    )
    hard_limit_usd: float | None = Field(
        default=None, ge=0, le=1e9, description="Above this spend, refuse with 429."
    )

    model_config = with_cel(
        cel(
            "!has(self.softLimitUsd) || !has(self.hardLimitUsd) || "
            "self.softLimitUsd <= self.hardLimitUsd",
            "softLimitUsd must be <= hardLimitUsd",
        )
    )

    @model_validator(mode="after")
    def _order(self) -> Budget:
        soft, hard = self.soft_limit_usd, self.hard_limit_usd
        if soft is not None and hard is not None and soft > hard:
            raise ValueError("softLimitUsd must be <= hardLimitUsd")
        return self


class RunningComponent(ApiModel):
    """Resources of one of Thrifty's own workloads, charged to a lever (or to `gateway`)."""

    name: Name = Field(description="Workload name (Deployment or StatefulSet).")
    lever: Literal["cache", "batch", "distill", "tier", "gateway"] = Field(
        description="Lever whose net savings this workload's cost is taken from."
    )
    replicas: int = Field(default=1, ge=0, le=10000, description="Pods.")
    cpu: float = Field(default=0, ge=0, le=100000, description="CPU cores per pod (requests).")
    memory_gib: float = Field(default=0, ge=0, le=100000, description="Memory GiB per pod.")
    gpu: float = Field(default=0, ge=0, le=1000, description="GPUs per pod.")


class NetSavings(ApiModel):
    """Prices of Thrifty's own running cost, so that savings are reported net of it."""

    cpu_hour_usd: float = Field(default=0.04, ge=0, le=1000, description="USD per CPU core hour.")
    memory_gib_hour_usd: float = Field(
        default=0.005, ge=0, le=1000, description="USD per GiB of memory per hour."
    )
    gpu_hour_usd: float = Field(default=2.5, ge=0, le=10000, description="USD per GPU hour.")
    components: list[RunningComponent] = Field(
        default_factory=list,
        max_length=128,
        description="Thrifty's own workloads (the operator fills these from what it owns).",
        json_schema_extra=list_map("name"),
    )
