"""A request moved to a cheaper tier that the cheap model cannot take (max_tokens above its
limit, a context too long, images or tools it does not support) goes on to the route's own
targets, and the tier reported is the one whose target answered."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from thrifty_core.api.costcontrol import Tiering
from thrifty_core.config import RouteConfig
from thrifty_core.errors import UpstreamError, UpstreamStatusError
from thrifty_core.prices import PriceCatalog, Usage
from thrifty_gateway.services.pipeline import Outcome, RequestContext, Target
from thrifty_gateway.services.resilience import Breakers, MovedTargets, call_with_fallback
from thrifty_gateway.services.tiering.decision import DECISION_KEY, TIER_KEY, TierDecision
from thrifty_gateway.services.tiering.stage import (
    TIER_HEADER,
    TierMetrics,
    TierStage,
    build_plan,
)
from thrifty_gateway.services.upstream import Timeouts, UpstreamResponse

MINI = Target("p", "gpt-4o-mini")
NANO = Target("q", "gpt-4.1-nano")
BIG = Target("p", "gpt-4o")
TOO_LARGE = {
    "error": {
        "message": "max_tokens is too large: 32000. This model supports at most 16384",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "invalid_value",
    }
}


class Scripted:
    """An upstream answering per model: (status, body)."""

    def __init__(self, answers: dict[str, tuple[int, dict[str, Any]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def send(
        self, target: Target, path: str, payload: bytes, timeouts: Timeouts, stream: bool
    ) -> UpstreamResponse:
        del path, payload, timeouts, stream
        self.calls.append(target.label)
        status, body = self.answers.get(target.model, (200, {"model": target.model}))
        return UpstreamResponse(status, {}, body=orjson.dumps(body))

    async def aclose(self) -> None:
        return None


async def call(client: Scripted, targets: list[Target]) -> Target:
    attempt = await call_with_fallback(
        client,
        Breakers(),
        targets,
        "chat/completions",
        lambda t: orjson.dumps({"model": t.model}),
        Timeouts(1, 1),
        stream=False,
        max_retries=0,
        retry_budget=0,
    )
    return attempt.target


@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_a_moved_targets_refusal_goes_on_to_the_routes_targets(status: int) -> None:
    client = Scripted({"gpt-4o-mini": (status, TOO_LARGE), "gpt-4.1-nano": (status, TOO_LARGE)})
    answered: list[Target] = []
    chain = MovedTargets([MINI, NANO, BIG], 2, answered.append)
    assert await call(client, chain) == BIG
    # the second cheap target of the tier is not asked: what one refused the tier cannot take
    assert client.calls == ["p/gpt-4o-mini", "p/gpt-4o"]
    assert answered == [BIG]


async def test_the_routes_own_refusal_and_credentials_go_back_to_the_client() -> None:
    client = Scripted({"gpt-4o-mini": (400, TOO_LARGE), "gpt-4o": (400, TOO_LARGE)})
    with pytest.raises(UpstreamStatusError) as refused:
        await call(client, MovedTargets([MINI, BIG], 1))
    assert refused.value.status == 400 and refused.value.param == "max_tokens"
    assert client.calls == ["p/gpt-4o-mini", "p/gpt-4o"]
    # a plain list (no tier moved the request) passes the first refusal on, as before
    client = Scripted({"gpt-4o-mini": (400, TOO_LARGE)})
    with pytest.raises(UpstreamStatusError):
        await call(client, [MINI, BIG])
    assert client.calls == ["p/gpt-4o-mini"]
    # 401/403/429 are not about what the cheap model can take
    client = Scripted({"gpt-4o-mini": (401, {})})
    with pytest.raises(UpstreamError):
        await call(client, MovedTargets([MINI, BIG], 1))
    assert client.calls == ["p/gpt-4o-mini"]


def tiering(rules: list[dict[str, Any]] | None = None, cascade: bool = False) -> Tiering:
    return Tiering.model_validate(
        {
            "tiers": [
                {
                    "name": "cheap",
                    "targets": [{"provider": "p", "model": "gpt-4o-mini"}],
                    "rules": rules or [],
                }
            ],
            "cascade": {"enabled": cascade},
        }
    )


def ctx(body: dict[str, Any] | None = None, targets: list[Target] | None = None) -> RequestContext:
    route = RouteConfig.model_validate(
        {
            "name": "smart",
            "targets": [{"provider": t.provider, "model": t.model} for t in (targets or [BIG])],
        }
    )
    return RequestContext(
        request_id="r",
        endpoint="chat",
        route=route,
        tenant=None,
        body=body or {"model": "smart", "messages": [{"role": "user", "content": "hi"}]},
        headers={},
        targets=list(targets or [BIG]),
        catalog=PriceCatalog(),
    )


def stage(t: Tiering, route_targets: tuple[Target, ...] = (BIG,)) -> TierStage:
    return TierStage(
        {"smart": build_plan(t, route_targets)}, None, TierMetrics(CollectorRegistry())
    )


async def test_a_fallback_from_the_cheap_tier_is_reported_as_the_routes_tier() -> None:
    s = stage(tiering())
    c = ctx()
    await s.before_upstream(c)
    assert isinstance(c.targets, MovedTargets) and c.targets.moved == 1
    assert c.response_headers[TIER_HEADER] == "cheap"
    assert c.targets.on_answer is not None
    c.targets.on_answer(BIG)  # the cheap model failed, the route's answered
    assert c.response_headers[TIER_HEADER] == "route"
    usage = Usage(1000, 500)
    await s.after_upstream(c, Outcome(200, {}, usage, "gpt-4o", BIG.label, 0.0075))
    assert c.state[TIER_KEY] == "route"
    assert "tier" not in c.savings  # the route's model answered: tiering saved nothing
    metric = s.metrics.decisions.labels("smart", "route", "rules")
    assert metric._value.get() == 1

    cheap = ctx()
    await s.before_upstream(cheap)
    await s.after_upstream(cheap, Outcome(200, {}, usage, "gpt-4o-mini", MINI.label, 0.00045))
    assert cheap.state[TIER_KEY] == "cheap"
    assert cheap.savings["tier"] == pytest.approx(0.0075 - 0.00045)


async def test_a_tier_target_that_is_the_routes_primary_is_not_moved() -> None:
    """A route whose own model is the tier's: its refusals are the client's."""
    c = ctx(targets=[MINI, BIG])
    await stage(tiering(), (MINI, BIG)).before_upstream(c)
    assert isinstance(c.targets, MovedTargets) and c.targets.moved == 0


async def test_the_cascade_never_asks_a_rejected_model_again() -> None:
    """Route [gpt-4o, gpt-4o-mini], cheap tier gpt-4o-mini, gpt-4o down: the last step tries
    gpt-4o only; the cheap refusal is not called again nor returned."""
    from types import SimpleNamespace

    from thrifty_core.errors import ThriftyError

    refusal = {
        "model": "gpt-4o-mini",
        "choices": [{"message": {"content": "I'm sorry, but I can't help with that."}}],
    }
    client = Scripted({"gpt-4o-mini": (200, refusal), "gpt-4o": (503, {"error": {}})})
    targets = (BIG, MINI)
    resources = SimpleNamespace(
        upstream=client,
        breakers=Breakers(),
        routes={"smart": SimpleNamespace(targets=targets, timeouts=Timeouts(1, 1))},
    )
    s = TierStage(
        {"smart": build_plan(tiering(cascade=True), targets)},
        resources,
        TierMetrics(CollectorRegistry()),
    )
    c = ctx(targets=list(targets))
    c.route = c.route.model_copy(update={"max_retries": 0})
    await s.before_upstream(c)
    decision: TierDecision = c.state[DECISION_KEY]
    assert decision.cascade
    with pytest.raises(ThriftyError):
        await s.cascade(c, s.plans["smart"], decision)
    assert client.calls == ["p/gpt-4o-mini", "p/gpt-4o"]
    assert c.spent_usd > 0  # the rejected cheap answer was paid for


async def test_a_budget_downgrade_keeps_to_what_the_cheap_tier_can_take() -> None:
    """Over a soft limit a request goes as cheap as its capabilities allow: an untagged text
    request to the cheap tier, an image request (the cheap tier says `hasImages: false`) to
    the route's own model, not to a 400."""
    from thrifty_gateway.services.tiering.decision import DOWNGRADE_KEY

    s = stage(tiering([{"metadata": {"tier": "cheap"}, "hasImages": False}]))
    text = ctx()
    text.state[DOWNGRADE_KEY] = True
    await s.before_upstream(text)
    assert (text.state[DECISION_KEY].tier, text.state[DECISION_KEY].reason) == ("cheap", "budget")
    image = ctx(
        {
            "model": "smart",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                    ],
                }
            ],
        }
    )
    image.state[DOWNGRADE_KEY] = True
    await s.before_upstream(image)
    assert image.state[DECISION_KEY].tier == "route"
    assert image.targets == [BIG]
