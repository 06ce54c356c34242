"""Tiering and the cache together, through the official openai client: an answer is cached
under the model of the tier that was chosen for the request, so a cheaper tier's answer is
never served to a request that would have gone to the route's own model (tags, `metadata`,
budget downgrades, cascade escalations)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.procs import Gateway, Simulator, local_config

pytestmark = pytest.mark.integration

SIM = "simulator"
TAGGED = {"x-thrifty-tags": "tier=cheap"}


def smart_route(**tiering: Any) -> dict[str, Any]:
    return {
        "name": "smart",
        "targets": [{"provider": SIM, "model": "gpt-4o"}],
        "tiering": {
            "tiers": [
                {
                    "name": "cheap",
                    "targets": [{"provider": SIM, "model": "gpt-4o-mini"}],
                    "rules": [{"metadata": {"tier": "cheap"}}],
                }
            ],
            **tiering,
        },
    }


def start(
    gateway_factory: GatewayFactory,
    simulator: Simulator,
    *,
    scope: str = "tenant",
    tenants: list[dict[str, Any]] | None = None,
    **tiering: Any,
) -> Gateway:
    base = local_config(simulator.url)
    policy = {"spec": {"scope": scope, "exact": {"enabled": True}, "semantic": {"enabled": False}}}
    return gateway_factory(
        routes=[*base["routes"], smart_route(**tiering)],
        tenants=tenants or base["tenants"],
        cachePolicies={"tiered": policy},
        defaultCachePolicy="tiered",
    )


def ask(client: openai.OpenAI, content: str, **kwargs: Any) -> Any:
    messages: Any = [{"role": "user", "content": content}]
    return client.chat.completions.with_raw_response.create(
        model="smart", messages=messages, **kwargs
    )


def until_hit(client: openai.OpenAI, content: str, **kwargs: Any) -> Any:
    """Ask until the answer comes from the exact cache (stores happen after the response)."""
    for _ in range(200):
        raw = ask(client, content, **kwargs)
        if raw.headers["x-thrifty-cache"] == "exact":
            return raw
        time.sleep(0.05)
    raise AssertionError("the answer was never cached")


def stores(gw: Gateway, result: str) -> float:
    for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
        if line.startswith(f'thrifty_cache_stores_total{{result="{result}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_tagged_cheap_answer_is_not_served_to_an_untagged_request(
    gateway_factory: GatewayFactory, simulator: Simulator
) -> None:
    gw = start(gateway_factory, simulator)
    client = gw.openai("sk-local-a")
    question = "Which tier answers this tagged question?"

    cheap = ask(client, question, extra_headers=TAGGED)
    assert cheap.headers["x-thrifty-cache"] == "miss"
    assert cheap.parse().model == "gpt-4o-mini"
    assert until_hit(client, question, extra_headers=TAGGED).parse().model == "gpt-4o-mini"

    # Same body, no tag: the route's own model must answer, not the cached cheap answer.
    plain = ask(client, question)
    assert plain.headers["x-thrifty-cache"] == "miss"
    assert plain.headers["x-thrifty-tier"] == "route"
    assert plain.parse().model == "gpt-4o"
    # Each tier now has its own entry.
    assert until_hit(client, question).parse().model == "gpt-4o"
    again = ask(client, question, extra_headers=TAGGED)
    assert again.headers["x-thrifty-cache"] == "exact"
    assert again.parse().model == "gpt-4o-mini"

    # Body `metadata` (ignored by the key) picks the tier the same way.
    by_metadata = until_hit(client, question, metadata={"tier": "cheap"})
    assert by_metadata.parse().model == "gpt-4o-mini"


def test_a_budget_downgrade_is_not_shared_with_another_tenant(
    gateway_factory: GatewayFactory, simulator: Simulator
) -> None:
    base = local_config(simulator.url)["tenants"]
    over_budget = {"period": "day", "softLimitUsd": 0}  # always over: always downgraded
    tenants = [{**t, "budget": over_budget} if t["name"] == "team-a" else t for t in base]
    gw = start(gateway_factory, simulator, scope="shared", tenants=tenants)
    question = "Does a downgraded answer leak to other tenants?"

    team_a = gw.openai("sk-local-a")
    downgraded = ask(team_a, question)
    assert downgraded.headers["x-thrifty-budget"].startswith("soft-limit")
    assert downgraded.parse().model == "gpt-4o-mini"
    assert until_hit(team_a, question).parse().model == "gpt-4o-mini"

    team_b = gw.openai("sk-local-b")
    full = ask(team_b, question)
    assert full.headers["x-thrifty-cache"] == "miss"
    assert full.parse().model == "gpt-4o"
    # the shared scope still shares what the same tier answers
    tagged = ask(team_b, question, extra_headers=TAGGED)
    assert tagged.headers["x-thrifty-cache"] == "exact"
    assert tagged.parse().model == "gpt-4o-mini"


def test_the_cascade_caches_checked_answers_and_not_escalated_ones(
    gateway_factory: GatewayFactory, simulator: Simulator
) -> None:
    # The simulator's mean log-probability is about -0.33: every cheap answer fails -0.05.
    gw = start(gateway_factory, simulator, cascade={"enabled": True, "minMeanLogprob": -0.05})
    client = gw.openai("sk-local-a")
    question = "Is an escalated answer cached under the cheap tier?"

    escalated = ask(client, question, extra_headers=TAGGED)
    assert escalated.headers["x-thrifty-tier-escalated"] == "cheap:logprob"
    assert escalated.parse().model == "gpt-4o"
    for _ in range(200):
        if stores(gw, "escalated") >= 1:
            break
        time.sleep(0.05)
    assert stores(gw, "escalated") == 1
    repeat = ask(client, question, extra_headers=TAGGED)
    assert repeat.headers["x-thrifty-cache"] == "miss"
    assert repeat.headers["x-thrifty-tier-escalated"] == "cheap:logprob"

    # A stream on a cascade route is routed unchecked: its cheap answer is not stored either.
    streamed = ask(client, "A streamed cheap answer", extra_headers=TAGGED, stream=True)
    assert [c.model for c in streamed.parse()][0] == "gpt-4o-mini"
    for _ in range(200):
        if stores(gw, "unchecked") >= 1:
            break
        time.sleep(0.05)
    assert stores(gw, "unchecked") == 1


def test_a_checked_cascade_answer_is_cached_under_its_tier(
    gateway_factory: GatewayFactory, simulator: Simulator
) -> None:
    gw = start(gateway_factory, simulator, cascade={"enabled": True, "minMeanLogprob": -0.9})
    client = gw.openai("sk-local-a")
    question = "Is a checked cheap answer reused?"

    kept = ask(client, question, extra_headers=TAGGED)
    assert kept.headers["x-thrifty-tier"] == "cheap"
    assert "x-thrifty-tier-escalated" not in kept.headers
    hit = until_hit(client, question, extra_headers=TAGGED)
    assert hit.parse().model == "gpt-4o-mini"
    assert hit.parse().choices[0].logprobs is None
    plain = ask(client, question)
    assert plain.headers["x-thrifty-cache"] == "miss"
    assert plain.parse().model == "gpt-4o"


def test_a_hit_on_a_cheap_tiers_answer_saves_its_price_and_tiering_the_rest(
    gateway_factory: GatewayFactory, simulator: Simulator
) -> None:
    """The cache saved the upstream price of the answer it served (the cheap tier's), not the
    route's baseline model's; the difference is what tiering saved, as on the first request."""
    gw = start(gateway_factory, simulator)
    client = gw.openai("sk-local-a")
    question = "What does a cached cheap answer save?"

    def ledger(requests: int) -> dict[str, float]:
        """Totals once the ledger holds `requests` (entries are written after responses)."""
        for _ in range(200):
            totals = httpx.get(
                f"{gw.url}/v1/thrifty/usage", headers={"authorization": "Bearer sk-local-admin"}
            ).json()["totals"]
            if totals["requests"] >= requests:
                return {"baseline": totals["baseline_cost_usd"], **totals["saved_by_lever_usd"]}
            time.sleep(0.05)
        raise AssertionError(f"the ledger never held {requests} requests")

    sent = 1
    assert ask(client, question, extra_headers=TAGGED).headers["x-thrifty-cache"] == "miss"
    while True:  # until the answer is stored (after the response)
        sent += 1
        hit = ask(client, question, extra_headers=TAGGED)
        if hit.headers["x-thrifty-cache"] == "exact":
            break
        assert sent < 200, "the answer was never cached"
        time.sleep(0.05)
    before = ledger(sent)
    again = ask(client, question, extra_headers=TAGGED)
    assert again.headers["x-thrifty-cache"] == "exact"
    after = ledger(sent + 1)
    usage = again.parse().usage
    assert usage is not None and hit.parse().model == "gpt-4o-mini"
    mini = (usage.prompt_tokens * 0.15 + usage.completion_tokens * 0.60) / 1e6
    full = (usage.prompt_tokens * 2.50 + usage.completion_tokens * 10.00) / 1e6
    assert after["cache"] - before["cache"] == pytest.approx(mini, rel=1e-6)
    assert after["tier"] - before["tier"] == pytest.approx(full - mini, rel=1e-6)
    assert after["baseline"] - before["baseline"] == pytest.approx(full, rel=1e-6)
