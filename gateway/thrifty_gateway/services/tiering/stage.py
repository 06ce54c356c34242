"""The tiering stage: send easy chat requests to a cheaper tier, optionally as a cascade.

The decision comes first: `TierStage` runs before the cache (see `stages.py`), picks the tier
(rules on the request, or when a budget is over its soft limit the cheapest tier whose rules'
capability conditions (`maxPromptTokens`, `hasImages`/`hasTools`/`hasResponseFormat: false`)
still hold) and leaves a `TierDecision` in `ctx.state[DECISION_KEY]`. The cache keys the
request by the chosen tier's first target, so a cheaper tier's answer is never served to a
request that would have gone to another tier (tags, `metadata` and budget downgrades are not
in the request's cache key).

Routing only (no cascade, a streamed request, or a budget downgrade): the decision replaces
`ctx.targets` with the tier's targets followed by the route's own (fallback; a cheap model that
cannot take the request, a 400/404/413/422, passes it on to them: see `MovedTargets`), and the
after hook records what the cheaper model saved against the route's baseline model under the
`tier` lever. The tier reported is the one whose target answered.

Cascade (non-streaming): `CascadeStage`, the last stage (only what no cache, student or
deferral answered), calls the chosen tier itself, checks the answer (mean log-probability,
JSON validity, refusal patterns) and escalates tier by tier up to the route's own targets
(without the targets it already tried: a rejected model is not asked again). The answer's cost
includes every attempt, so a cascade that escalates shows a negative `tier`
saving instead of hiding what the failed attempt cost.

Cache rule (`TierDecision.cacheable`): an answer is stored only under the key of the tier that
was chosen, and only when that tier's first target produced it. On a route with a cascade,
a cheap tier's answer is stored only once the cascade checked it: escalated answers are never
cached (the next identical request runs the cascade again), and neither are cheap answers
routed without the checks (streams, budget downgrades).

Every decision is in `x-thrifty-tier` (and `x-thrifty-tier-escalated` when the cascade
escalated), in `ctx.state["tier"]` for the ledger, and in the `thrifty_tier_decisions` metric
(counted when a model answered, not on a cache, student or deferral answer), each naming the
tier of the target that answered.

A difficulty classifier is picked up when a version is promoted (or the pin changes) every
`RELOAD_SECONDS` (see reload.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import Counter

from thrifty_core.api.costcontrol import Tiering
from thrifty_core.config import GatewayConfig
from thrifty_core.errors import ThriftyError

from ..embedders import EmbedderOnce
from ..pipeline import Outcome, RequestContext, StageResponse, Target
from ..proxy import estimate_usage
from ..resilience import MovedTargets, call_with_fallback
from ..sse import usage_of
from .checks import check_answer, compile_patterns
from .classifier import DifficultyScorer
from .decision import DECISION_KEY, DOWNGRADE_KEY, TIER_KEY, TierDecision
from .features import extract_features
from .reload import load_scorer, reload_loop
from .rules import cheapest_able, choose_tier, needs_difficulty

log = logging.getLogger(__name__)

__all__ = [
    "DECISION_KEY",
    "DOWNGRADE_KEY",
    "TIER_KEY",
    "CascadeStage",
    "TierDecision",
    "TierStage",
    "cascade_stage",
    "tier_stage",
]

ROUTE_TIER = "route"  # name of the route's own targets, the strongest tier
TIER_HEADER = "x-thrifty-tier"
ESCALATED_HEADER = "x-thrifty-tier-escalated"
RELOAD_SECONDS = 15.0  # between looks for a newly promoted difficulty classifier


@dataclass(frozen=True, slots=True)
class TierPlan:
    """A route's tiering, compiled: (name, targets) cheapest first, the route's own last."""

    tiering: Tiering
    tiers: tuple[tuple[str, tuple[Target, ...]], ...]
    patterns: tuple[re.Pattern[str], ...]
    scorer: DifficultyScorer | None = None

    @property
    def top(self) -> int:
        return len(self.tiers) - 1

    def answered_by(self, chosen: int, label: str) -> str:
        """The tier whose target `label` answered: the chosen tier or a stronger one it fell
        back to (the chosen tier's name when no target is named so)."""
        for name, targets in self.tiers[chosen:]:
            if any(t.label == label for t in targets):
                return name
        return self.tiers[chosen][0]


def build_plan(
    tiering: Tiering, route_targets: tuple[Target, ...], scorer: DifficultyScorer | None = None
) -> TierPlan:
    tiers = tuple(
        (t.name, tuple(Target(x.provider, x.model) for x in t.targets)) for t in tiering.tiers
    )
    return TierPlan(
        tiering=tiering,
        tiers=(*tiers, (ROUTE_TIER, route_targets)),
        patterns=compile_patterns(tiering.cascade.refusal_patterns),
        scorer=scorer,
    )


class TierMetrics:
    def __init__(self, registry: Any) -> None:
        self.decisions = Counter(
            "thrifty_tier_decisions",
            "Tier routing decisions (the tier that answered).",
            ["route", "tier", "reason"],
            registry=registry,
        )
        self.escalations = Counter(
            "thrifty_tier_escalations",
            "Cascade escalations, by the tier that failed and the failed check.",
            ["route", "tier", "check"],
            registry=registry,
        )
        self.wasted = Counter(
            "thrifty_tier_cascade_wasted_usd",
            "Money spent on cheap answers the cascade rejected, USD.",
            ["route"],
            registry=registry,
        )


class TierStage:
    """See the module docstring."""

    name = "tiering"

    def __init__(self, plans: dict[str, TierPlan], resources: Any, metrics: TierMetrics) -> None:
        self.plans = plans
        self.resources = resources
        self.metrics = metrics
        self.tasks: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _difficulty(self, plan: TierPlan, text: str) -> float | None:
        if plan.scorer is None or not needs_difficulty(plan.tiering):
            return None
        try:
            return await asyncio.to_thread(plan.scorer.difficulty, text)
        except Exception:
            log.exception("difficulty classifier failed; rules needing it do not match")
            return None

    @property
    def has_cascade(self) -> bool:
        return any(p.tiering.cascade.enabled for p in self.plans.values())

    async def before_upstream(self, ctx: RequestContext) -> StageResponse | None:
        """Decide the tier (before the cache looks up); route to it unless it cascades."""
        plan = self.plans.get(ctx.route.name)
        if plan is None or ctx.endpoint != "chat":
            return None
        downgrade = bool(ctx.state.get(DOWNGRADE_KEY))
        features = extract_features(ctx.body, ctx.headers)
        if downgrade:
            index, reason = cheapest_able(plan.tiering, features), "budget"
        else:
            difficulty = await self._difficulty(plan, features.user_text)
            index, reason = choose_tier(plan.tiering, features, difficulty), "rules"
        name, targets = plan.tiers[index]
        below_top = index < plan.top
        checks = plan.tiering.cascade.enabled and below_top
        decision = TierDecision(
            tier=name,
            index=index,
            target=targets[0].label,
            reason=reason,
            cascade=checks and not ctx.stream and not downgrade,
            needs_check=checks,
            provider=targets[0].provider,
        )
        if below_top and not decision.cascade:
            ctx.targets = moved_targets(ctx, plan, decision, targets)
        ctx.state[DECISION_KEY] = decision
        ctx.response_headers[TIER_HEADER] = name
        return None

    async def cascade(
        self, ctx: RequestContext, plan: TierPlan, decision: TierDecision
    ) -> StageResponse:
        """Call the chosen tier, check its answer, escalate until one passes (or the route's
        own targets answer)."""
        index = decision.index
        state = self.resources
        runtime = state.routes[ctx.route.name]
        cascade = plan.tiering.cascade
        spent = 0.0
        escalated: list[str] = []
        tried: set[Target] = set()
        for i in range(index, plan.top + 1):
            name, targets = plan.tiers[i]
            last = i == plan.top
            body = ctx.body
            add_logprobs = (
                not last and cascade.min_mean_logprob is not None and not body.get("logprobs")
            )
            if add_logprobs:
                body = {**body, "logprobs": True}

            def payload_for(target: Target, body: dict[str, Any] = body) -> bytes:
                return orjson.dumps({**body, "model": target.model})

            # The last step leaves out what the cheaper steps tried (a route whose fallbacks
            # hold the cheap model must not return that model's rejected answer).
            if last:
                chain = [t for t in ctx.targets if t not in tried] or ctx.targets
            else:
                chain = [*targets]
            tried.update(chain)
            try:
                attempt = await call_with_fallback(
                    state.upstream,
                    state.breakers,
                    chain,
                    "chat/completions",
                    payload_for,
                    runtime.timeouts,
                    stream=False,
                    max_retries=0 if not last else ctx.route.max_retries,
                    retry_budget=ctx.route.retry_budget_seconds,
                )
            except ThriftyError:
                if last:
                    # The cheaper tiers' answers were paid for; a direct call would have failed
                    # for free.
                    ctx.spend("tier", spent)
                    raise
                escalated.append(f"{name}:error")
                self.metrics.escalations.labels(ctx.route.name, name, "error").inc()
                continue
            try:
                answer: dict[str, Any] | None = orjson.loads(attempt.response.body)
            except orjson.JSONDecodeError:
                answer = None
            usage = usage_of(answer) or estimate_usage(body, answer)
            answered = attempt.target
            spent += ctx.catalog.cost(answered.model, usage, provider=answered.provider)
            if not last:
                verdict = check_answer(cascade, plan.patterns, ctx.body, answer)
                if not verdict.ok:
                    escalated.append(f"{name}:{verdict.reason}")
                    self.metrics.escalations.labels(ctx.route.name, name, verdict.reason).inc()
                    continue
                if add_logprobs and answer is not None:
                    for choice in answer.get("choices") or ():
                        choice["logprobs"] = None
            answer_cost = ctx.catalog.cost(answered.model, usage, provider=answered.provider)
            if spent > answer_cost:
                self.metrics.wasted.labels(ctx.route.name).inc(spent - answer_cost)
            saved = ctx.baseline_cost(usage) - spent
            ctx.add_saving("tier", saved)
            ctx.state[TIER_KEY] = name
            decision.answered = True
            decision.escalated = bool(escalated)
            decision.checked = not escalated and not last
            headers = {TIER_HEADER: name}
            if escalated:
                headers[ESCALATED_HEADER] = ",".join(escalated)
            ctx.response_headers.update(headers)
            reason = "cascade-escalated" if escalated else "cascade"
            self.metrics.decisions.labels(ctx.route.name, name, reason).inc()
            return StageResponse(
                lever="tier" if not last else None,
                body=answer,
                usage=usage,
                model=attempt.target.model,
                served_by=attempt.target.label,
                cost_usd=spent,
                headers=headers,
            )
        raise AssertionError("the route tier always answers or raises")  # pragma: no cover

    async def after_upstream(self, ctx: RequestContext, outcome: Outcome) -> None:
        """Routed requests a model answered: the tier for the ledger, the decision metric,
        and what the cheaper model saved against the baseline model."""
        decision: TierDecision | None = ctx.state.get(DECISION_KEY)
        plan = self.plans.get(ctx.route.name)
        if decision is None or decision.cascade or outcome.from_stage or plan is None:
            return  # the cascade records its own; a cache, student or deferral answered
        tier = plan.answered_by(decision.index, outcome.served_by)
        ctx.state[TIER_KEY] = tier
        self.metrics.decisions.labels(ctx.route.name, tier, decision.reason).inc()
        if tier != ROUTE_TIER and outcome.status < 400:
            # What the tier's answer cost, not what other levers spent on the request (a
            # student that ran first books its own cost as its own loss).
            paid = outcome.cost_usd - ctx.spent_usd
            ctx.add_saving("tier", ctx.baseline_cost(outcome.usage) - paid)
            outcome.lever = "tier"  # served by the tier lever, as a cascade's answer is


def moved_targets(
    ctx: RequestContext, plan: TierPlan, decision: TierDecision, targets: tuple[Target, ...]
) -> MovedTargets:
    """The tier's targets, then the route's own (as fallbacks, and where a request the cheap
    models cannot take goes); the tier header names the tier whose target answers."""
    own = ctx.targets
    moved = next((i for i, t in enumerate(targets) if own and t == own[0]), len(targets))

    def on_answer(target: Target) -> None:
        ctx.response_headers[TIER_HEADER] = plan.answered_by(decision.index, target.label)

    return MovedTargets([*targets, *(t for t in own if t not in targets)], moved, on_answer)


class CascadeStage:
    """The cascade of the routes whose decision says so; the last stage (see the module
    docstring). Shares the deciding `TierStage`'s plans and metrics."""

    name = "tiering-cascade"

    def __init__(self, router: TierStage) -> None:
        self.router = router

    async def before_upstream(self, ctx: RequestContext) -> StageResponse | None:
        decision: TierDecision | None = ctx.state.get(DECISION_KEY)
        plan = self.router.plans.get(ctx.route.name)
        if decision is None or not decision.cascade or plan is None:
            return None
        return await self.router.cascade(ctx, plan, decision)

    async def after_upstream(self, ctx: RequestContext, outcome: Outcome) -> None:
        del ctx, outcome  # the deciding stage's after hook does the accounting


async def tier_stage(config: GatewayConfig, resources: Any) -> TierStage | None:
    """The stage for the routes that declare `tiering` (None when none does)."""
    configured = [r for r in config.routes if r.tiering is not None]
    if not configured:
        return None
    plans: dict[str, TierPlan] = {}
    embedder = EmbedderOnce(resources)
    for route in configured:
        assert route.tiering is not None
        scorer = None
        if route.tiering.classifier is not None and needs_difficulty(route.tiering):
            scorer = await asyncio.to_thread(load_scorer, route.tiering, embedder)
        plans[route.name] = build_plan(route.tiering, resources.routes[route.name].targets, scorer)
    stage = TierStage(plans, resources, TierMetrics(resources.metrics.registry))
    if any(
        p.tiering.classifier is not None and needs_difficulty(p.tiering) for p in plans.values()
    ):
        task = asyncio.get_running_loop().create_task(reload_loop(stage, embedder, RELOAD_SECONDS))
        stage.tasks.add(task)
    return stage


def cascade_stage(router: TierStage | None) -> CascadeStage | None:
    """The cascade stage for `router`'s plans (None when no route enables a cascade)."""
    return CascadeStage(router) if router is not None and router.has_cascade else None
