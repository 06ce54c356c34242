"""The hygiene stage: default stop sequences and the repeated long prefix metric."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from thrifty_core.api.costcontrol import Hygiene
from thrifty_core.config import GatewayConfig

from ..pipeline import Outcome, RequestContext, StageResponse
from .prefix import PrefixTracker, prefix_digest


class HygieneMetrics:
    def __init__(self, registry: Any) -> None:
        self.repeated_prefix = Counter(
            "thrifty_prompt_repeated_prefix",
            "Prompts resending a long prefix seen recently (prompt caching candidates).",
            ["route"],
            registry=registry,
        )
        self.repeated_prefix_tokens = Counter(
            "thrifty_prompt_repeated_prefix_tokens",
            "Tokens in those repeated prefixes.",
            ["route"],
            registry=registry,
        )
        self.cached_tokens = Counter(
            "thrifty_prompt_provider_cached_tokens",
            "Prompt tokens the provider reported as cached (priced at the cached-input price).",
            ["route"],
            registry=registry,
        )
        self.stop_added = Counter(
            "thrifty_default_stop_added",
            "Requests that got the route's default stop sequences.",
            ["route"],
            registry=registry,
        )


class HygieneStage:
    """Edits chat requests of the routes that declare `hygiene`; never answers itself."""

    name = "hygiene"

    def __init__(self, routes: dict[str, Hygiene], metrics: HygieneMetrics) -> None:
        self.routes = routes
        self.metrics = metrics
        self.trackers = {
            name: PrefixTracker(h.prefix_watch.window)
            for name, h in routes.items()
            if h.prefix_watch.enabled
        }

    async def before_upstream(self, ctx: RequestContext) -> StageResponse | None:
        hygiene = self.routes.get(ctx.route.name)
        if hygiene is None or ctx.endpoint != "chat":
            return None
        body = ctx.body
        if hygiene.default_stop and body.get("stop") is None:
            body["stop"] = list(hygiene.default_stop)
            self.metrics.stop_added.labels(ctx.route.name).inc()
        tracker = self.trackers.get(ctx.route.name)
        if tracker is not None:
            tokens = hygiene.prefix_watch.min_prefix_tokens
            digest = prefix_digest(body.get("messages") or (), tokens)
            if digest is not None and tracker.seen(digest):
                self.metrics.repeated_prefix.labels(ctx.route.name).inc()
                self.metrics.repeated_prefix_tokens.labels(ctx.route.name).inc(tokens)
        return None

    async def after_upstream(self, ctx: RequestContext, outcome: Outcome) -> None:
        if ctx.route.name in self.routes and outcome.usage.cached_tokens:
            self.metrics.cached_tokens.labels(ctx.route.name).inc(outcome.usage.cached_tokens)


async def hygiene_stage(config: GatewayConfig, resources: Any) -> HygieneStage | None:
    routes = {r.name: r.hygiene for r in config.routes if r.hygiene is not None}
    if not routes:
        return None
    return HygieneStage(routes, HygieneMetrics(resources.metrics.registry))
