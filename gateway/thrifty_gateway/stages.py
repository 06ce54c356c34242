"""The default pipeline stages, in order (see services/pipeline.py for the contract).

Each entry is a `StageFactory`: an async callable `(config, state) -> Stage | None` that
imports its module lazily and returns None when the config does not enable it. Components add
their factory here (tier decision, exact cache, semantic cache, student routing, deferral,
cascade).
"""

from __future__ import annotations

from typing import Any

from .services.pipeline import Stage, StageFactory


async def cache_stage(config: Any, resources: Any) -> Stage | None:
    """Exact + semantic cache (services/cache), when the config declares cache policies."""
    from .services.cache.stage import cache_stage as factory

    return await factory(config, resources)


async def distill_stage(config: Any, resources: Any) -> Stage | None:
    """Student routing, capture and evaluation (services/distill), when students are declared."""
    if not getattr(config, "students", None):
        return None
    from .services.distill import distill_stage_factory

    return await distill_stage_factory()(config, resources)


async def batch_stage(config: Any, resources: Any) -> Stage | None:
    """Deferral (202 + queue) and embeddings coalescing (services/batching), when the config
    has a batch section."""
    from .services.batching.stage import batch_stage as factory

    return await factory(config, resources)


async def budget_stage(config: Any, resources: Any) -> Stage | None:
    """Tenant and route budgets (services/budgets), first: a hard limit refuses before any
    work, a soft limit marks the request for the cheapest tier."""
    from .services.budgets.stage import budget_stage as factory

    return await factory(config, resources)


async def hygiene_stage(config: Any, resources: Any) -> Stage | None:
    """Default stop sequences and the repeated-prefix metric (services/hygiene)."""
    from .services.hygiene.stage import hygiene_stage as factory

    return await factory(config, resources)


def tier_stages() -> tuple[StageFactory, StageFactory]:
    """Tiering (services/tiering) as two stages sharing one decision-maker: the decision
    before the cache (the cache keys an answer by the chosen tier's model, so tiers never share
    an entry), the cascade last (only what no cache, student or deferral answered goes to a
    model). Each call gives a fresh pair."""
    built: list[Any] = []

    async def tier_stage(config: Any, resources: Any) -> Stage | None:
        from .services.tiering.stage import tier_stage as factory

        stage = await factory(config, resources)
        built[:] = [stage]
        return stage

    async def tier_cascade_stage(_config: Any, _resources: Any) -> Stage | None:
        from .services.tiering.stage import cascade_stage

        return cascade_stage(built[0] if built else None)

    return tier_stage, tier_cascade_stage


def default_stage_factories() -> list[StageFactory]:
    """Factories `create_app` uses when the caller passes none: budgets first (a soft limit
    decides the tier), then hygiene (it edits the body the cache key is made of), the tier
    decision, the caches, student routing, deferral, and the cascade."""
    tier_decision, tier_cascade = tier_stages()
    return [
        budget_stage,
        hygiene_stage,
        tier_decision,
        cache_stage,
        distill_stage,
        batch_stage,
        tier_cascade,
    ]
