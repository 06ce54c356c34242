"""The tier decision: taken before the cache, it names the model the cache keys an answer by
and says which answers may be stored."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from thrifty_core.api.costcontrol import Tiering
from thrifty_core.config import RouteConfig
from thrifty_core.prices import PriceCatalog
from thrifty_gateway.services.pipeline import RequestContext, Target
from thrifty_gateway.services.tiering.decision import DECISION_KEY, DOWNGRADE_KEY, TierDecision
from thrifty_gateway.services.tiering.stage import TierMetrics, TierStage, build_plan
from thrifty_gateway.stages import cache_stage, default_stage_factories

ROUTE_TARGET = Target("p", "big")


def tiering(cascade: bool) -> Tiering:
    return Tiering.model_validate(
        {
            "tiers": [
                {
                    "name": "cheap",
                    "targets": [{"provider": "p", "model": "small"}],
                    "rules": [{"metadata": {"tier": "cheap"}}],
                }
            ],
            "cascade": {"enabled": cascade},
        }
    )


def stage(cascade: bool = False) -> TierStage:
    plan = build_plan(tiering(cascade), (ROUTE_TARGET,))
    return TierStage({"smart": plan}, None, TierMetrics(CollectorRegistry()))


def ctx(
    headers: dict[str, str] | None = None, state: dict[str, Any] | None = None
) -> RequestContext:
    route = RouteConfig.model_validate(
        {"name": "smart", "targets": [{"provider": "p", "model": "big"}]}
    )
    c = RequestContext(
        request_id="r",
        endpoint="chat",
        route=route,
        tenant=None,
        body={"model": "smart", "messages": [{"role": "user", "content": "hi"}]},
        headers=headers or {},
        targets=[ROUTE_TARGET],
        catalog=PriceCatalog(),
    )
    c.state.update(state or {})
    return c


def decision(c: RequestContext) -> TierDecision:
    d = c.state[DECISION_KEY]
    assert isinstance(d, TierDecision)
    return d


async def test_routing_decision_names_the_tier_target_and_replaces_the_targets() -> None:
    tagged = ctx({"x-thrifty-tags": "tier=cheap"})
    assert await stage().before_upstream(tagged) is None
    assert decision(tagged).target == "p/small"
    assert tagged.targets == [Target("p", "small"), ROUTE_TARGET]
    assert decision(tagged).cacheable() is None

    plain = ctx()
    await stage().before_upstream(plain)
    assert decision(plain).tier == "route"
    assert decision(plain).target == "p/big"
    assert plain.targets == [ROUTE_TARGET]


async def test_budget_downgrade_routes_to_the_cheapest_tier() -> None:
    c = ctx(state={DOWNGRADE_KEY: True})
    await stage(cascade=True).before_upstream(c)
    d = decision(c)
    assert (d.tier, d.reason, d.target, d.cascade) == ("cheap", "budget", "p/small", False)
    # routed without the cascade's checks: not cacheable on a cascade route
    assert d.cacheable() == "unchecked"


async def test_cascade_decision_keeps_the_targets_and_caches_only_checked_answers() -> None:
    c = ctx({"x-thrifty-tags": "tier=cheap"})
    await stage(cascade=True).before_upstream(c)
    d = decision(c)
    assert d.cascade and d.target == "p/small"
    assert c.targets == [ROUTE_TARGET]  # the cascade calls the tier itself
    assert d.cacheable() == "unchecked"
    d.checked = True
    assert d.cacheable() is None
    d.escalated = True
    assert d.cacheable() == "escalated"


def test_the_tier_decision_comes_before_the_cache_and_the_cascade_last() -> None:
    names = [getattr(f, "__name__", "") for f in default_stage_factories()]
    assert names.index("tier_stage") < names.index(cache_stage.__name__)
    assert names[-1] == "tier_cascade_stage"
