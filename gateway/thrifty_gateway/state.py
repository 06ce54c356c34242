"""Typed app state: what the lifespan opens and the routes get through `Depends`."""

from __future__ import annotations

from dataclasses import dataclass, field

from thrifty_core.config import GatewayConfig, RouteConfig
from thrifty_core.prices import PriceCatalog

from .services.auth import KeyStore
from .services.ledger import Ledger
from .services.metrics import Metrics
from .services.pipeline import Stage, Target
from .services.ratelimit import Limiter
from .services.resilience import Breakers
from .services.upstream import Timeouts, UpstreamClient


@dataclass(frozen=True, slots=True)
class RouteRuntime:
    """A route with everything the hot path needs precomputed."""

    config: RouteConfig
    targets: tuple[Target, ...]
    timeouts: Timeouts


def build_routes(config: GatewayConfig) -> dict[str, RouteRuntime]:
    return {
        r.name: RouteRuntime(
            config=r,
            targets=tuple(Target(t.provider, t.model) for t in r.targets),
            timeouts=Timeouts(connect=r.connect_timeout_seconds, total=r.timeout_seconds),
        )
        for r in config.routes
    }


def build_catalog(config: GatewayConfig) -> PriceCatalog:
    """Built-in prices, then gateway-wide overrides; a provider's overrides price that
    provider's targets only (`catalog.cost(model, usage, provider=target.provider)`)."""
    return PriceCatalog(
        config.prices, providers={p.name: p.prices for p in config.providers if p.prices}
    )


def unpriced_models(config: GatewayConfig, catalog: PriceCatalog) -> list[str]:
    """Route target models the catalog has no price for (they cost 0: budgets never charge
    them, savings against them are 0), to be said at start."""
    targets = {(t.provider, t.model) for r in config.routes for t in r.targets}
    targets |= {
        (t.provider, t.model)
        for r in config.routes
        if r.tiering
        for tier in r.tiering.tiers
        for t in tier.targets
    }
    return sorted({m for p, m in targets if catalog.lookup(m, p) is None})


@dataclass
class GatewayState:
    """Everything one gateway app holds; built by the lifespan, read by the routes."""

    config: GatewayConfig
    catalog: PriceCatalog
    keys: KeyStore
    limiter: Limiter
    upstream: UpstreamClient
    breakers: Breakers
    metrics: Metrics
    ledger: Ledger
    routes: dict[str, RouteRuntime]
    stages: list[Stage] = field(default_factory=list)
    ready: bool = False
