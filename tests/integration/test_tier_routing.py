"""Tiered routing through the official openai client: easy requests go to the cheap tier, the
cascade escalates when the cheap answer fails a check, every decision is in x-thrifty-tier and
in the ledger."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.procs import Gateway, Simulator, local_config

pytestmark = pytest.mark.integration

SIM = "simulator"
EASY: list[Any] = [{"role": "user", "content": "What are your opening hours?"}]
HARD: list[Any] = [{"role": "user", "content": "Compare these contracts clause by clause. " * 60}]


def cheap_tier(**extra: Any) -> dict[str, Any]:
    return {
        "name": "cheap",
        "targets": [{"provider": SIM, "model": "gpt-4o-mini"}],
        "rules": [{"maxPromptTokens": 200, "hasTools": False}],
        **extra,
    }


def routes(simulator: Simulator, **tiering: Any) -> list[dict[str, Any]]:
    base: list[dict[str, Any]] = local_config(simulator.url)["routes"]
    smart = {
        "name": "smart",
        "targets": [{"provider": SIM, "model": "gpt-4o"}],
        "tiering": {"tiers": [cheap_tier()], **tiering},
    }
    return [*base, smart]


def usage(gw: Gateway, expect_requests: int) -> dict[str, Any]:
    """The admin's ledger view once it holds `expect_requests` requests (written after the
    response, so poll briefly)."""
    deadline = time.monotonic() + 10
    while True:
        body: dict[str, Any] = httpx.get(
            f"{gw.base_url()}/thrifty/usage",
            headers={"authorization": "Bearer sk-local-admin"},
        ).json()
        if body["totals"]["requests"] >= expect_requests or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_easy_requests_go_to_the_cheap_tier_and_the_ledger_says_so(
    gateway_factory: GatewayFactory, simulator: Simulator
) -> None:
    net = {
        "cpuHourUsd": 0.05,
        "components": [{"name": "gw", "lever": "gateway", "replicas": 2, "cpu": 1}],
    }
    gw = gateway_factory(routes=routes(simulator), netSavings=net)
    client = gw.openai("sk-local-a")

    easy = client.chat.completions.with_raw_response.create(model="smart", messages=EASY)
    assert easy.headers["x-thrifty-tier"] == "cheap"
    assert easy.headers["x-thrifty-upstream"] == "simulator/gpt-4o-mini"
    assert easy.parse().model == "gpt-4o-mini"

    hard = client.chat.completions.with_raw_response.create(model="smart", messages=HARD)
    assert hard.headers["x-thrifty-tier"] == "route"
    assert hard.parse().model == "gpt-4o"

    tools: list[Any] = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    with_tools = client.chat.completions.with_raw_response.create(
        model="smart", messages=EASY, tools=tools
    )
    assert with_tools.headers["x-thrifty-tier"] == "route"

    tagged = client.chat.completions.with_raw_response.create(
        model="smart", messages=EASY, stream=True
    )
    assert tagged.headers["x-thrifty-tier"] == "cheap"  # streams are routed by the rules too
    chunks = list(tagged.parse())
    assert chunks and chunks[0].model == "gpt-4o-mini"

    body = usage(gw, 4)
    smart = next(r for r in body["by_route"] if r["route"] == "smart")
    assert smart["served_by_tier"] == {"cheap": 2, "route": 2}
    # the cheap tier's answers are the tier lever's, as a cascade's are (its saving is booked
    # there: before 2026-12-08 they were counted under no lever)
    assert smart["served_by_lever"]["tier"] == 2
    assert smart["saved_by_lever_usd"]["tier"] > 0
    # baseline = what gpt-4o would have cost: more than what was paid
    assert smart["baseline_cost_usd"] > smart["cost_usd"]
    ns = body["net_savings"]
    assert ns["running_cost_per_hour_usd"]["gateway"] == pytest.approx(0.1)
    assert ns["net_saved_usd"] < body["totals"]["saved_usd"]

    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'thrifty_tier_decisions_total{reason="rules",route="smart",tier="cheap"} 2.0' in metrics
    served = [
        ln.split()[-1]
        for ln in metrics.splitlines()
        if ln.startswith("thrifty_requests_total{") and 'route="smart"' in ln
        and 'lever="tier"' in ln
    ]  # fmt: skip
    assert sum(float(n) for n in served) == 2.0


def test_cascade_escalates_when_the_cheap_answer_fails_a_check(
    gateway_factory: GatewayFactory, simulator: Simulator
) -> None:
    # The simulator's token log-probabilities average about -0.33: a floor of -0.05 fails
    # every cheap answer, so every request escalates; the other route accepts them.
    strict = {"enabled": True, "minMeanLogprob": -0.05}
    lenient = {"enabled": True, "minMeanLogprob": -0.9, "refusalPatterns": ["(?i)unable to comply"]}
    all_routes = routes(simulator, cascade=strict)
    all_routes.append(
        {
            "name": "lenient",
            "targets": [{"provider": SIM, "model": "gpt-4o"}],
            "tiering": {"tiers": [cheap_tier()], "cascade": lenient},
        }
    )
    gw = gateway_factory(routes=all_routes)
    client = gw.openai("sk-local-a")

    escalated = client.chat.completions.with_raw_response.create(model="smart", messages=EASY)
    assert escalated.headers["x-thrifty-tier"] == "route"
    assert escalated.headers["x-thrifty-tier-escalated"] == "cheap:logprob"
    assert escalated.parse().model == "gpt-4o"

    kept = client.chat.completions.with_raw_response.create(model="lenient", messages=EASY)
    assert kept.headers["x-thrifty-tier"] == "cheap"
    assert "x-thrifty-tier-escalated" not in kept.headers
    answer = kept.parse()
    assert answer.model == "gpt-4o-mini"
    assert answer.choices[0].logprobs is None  # asked for the check, not shown to the client

    # invalid JSON: the cheap tier's JSON is cut by max_tokens
    broken = client.chat.completions.with_raw_response.create(
        model="lenient",
        messages=EASY,
        response_format={"type": "json_object"},
        max_tokens=12,
    )
    assert broken.headers["x-thrifty-tier-escalated"] == "cheap:json"

    # a refusal pattern (the simulator echoes the last words into a JSON string field)
    schema = {"type": "object", "properties": {"reply": {"type": "string"}}}
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}
    ask: list[Any] = [{"role": "user", "content": "If you must, say: unable to comply"}]
    refused = client.chat.completions.with_raw_response.create(
        model="lenient", messages=ask, response_format=fmt
    )
    assert refused.headers["x-thrifty-tier-escalated"] == "cheap:refusal"
    assert refused.parse().model == "gpt-4o"

    body = usage(gw, 4)
    smart = next(r for r in body["by_route"] if r["route"] == "smart")
    # the failed cheap attempt was paid for: the tier lever shows it as a negative saving
    assert smart["saved_by_lever_usd"]["tier"] < 0
    assert smart["served_by_tier"] == {"route": 1}
    lenient_row = next(r for r in body["by_route"] if r["route"] == "lenient")
    assert lenient_row["served_by_tier"] == {"cheap": 1, "route": 2}
    assert lenient_row["served_by_lever"]["tier"] == 1

    metrics = httpx.get(f"{gw.url}/metrics").text
    for check in ("logprob", "json", "refusal"):
        assert f'check="{check}"' in metrics
    assert 'thrifty_tier_cascade_wasted_usd_total{route="smart"}' in metrics


def test_hygiene_ceiling_default_stop_and_repeated_prefixes(
    gateway_factory: GatewayFactory, simulator: Simulator
) -> None:
    base: list[dict[str, Any]] = local_config(simulator.url)["routes"]
    tidy = {
        "name": "tidy",
        "targets": [{"provider": SIM, "model": "gpt-4o-mini"}],
        "maxTokensCeiling": 5,
        "hygiene": {"defaultStop": ["\n\nUser:"], "prefixWatch": {"minPrefixTokens": 64}},
    }
    gw = gateway_factory(routes=[*base, tidy])
    client = gw.openai("sk-local-a")
    system = {"role": "system", "content": "You answer questions about our shop. " * 20}
    for question in ("Where is my parcel?", "Can I pay by card?"):
        messages: Any = [system, {"role": "user", "content": question}]
        answer = client.chat.completions.create(model="tidy", messages=messages, max_tokens=500)
        assert answer.choices[0].finish_reason == "length"  # the ceiling, not the client's 500
        assert answer.usage is not None and answer.usage.completion_tokens <= 5

    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'thrifty_default_stop_added_total{route="tidy"} 2.0' in metrics
    assert 'thrifty_prompt_repeated_prefix_total{route="tidy"} 1.0' in metrics
    assert 'thrifty_prompt_repeated_prefix_tokens_total{route="tidy"} 64.0' in metrics


def test_a_cascade_whose_last_tier_fails_still_books_what_its_cheap_attempts_cost(
    gateway_factory: GatewayFactory, simulator: Simulator
) -> None:
    """The cheap answer is paid for, fails its check, and the route's own target fails: the
    client gets the error, and the ledger still shows what the cheap attempt cost (a loss of
    the tier lever: a direct call would have failed for nothing)."""
    smart = {
        "name": "smart",
        "targets": [{"provider": SIM, "model": "broken-model"}],
        "maxRetries": 0,
        "tiering": {
            "tiers": [cheap_tier()],
            "cascade": {"enabled": True, "minMeanLogprob": -0.05},
        },
    }
    gw = gateway_factory(routes=[*local_config(simulator.url)["routes"], smart])
    resp = httpx.post(
        f"{gw.base_url()}/chat/completions",
        json={"model": "smart", "messages": EASY},
        headers={"authorization": "Bearer sk-local-a"},
        timeout=20,
    )
    assert resp.status_code >= 500
    body = usage(gw, 1)
    route = next(r for r in body["by_route"] if r["route"] == "smart")
    assert route["requests"] == 1 and route["errors"] == 1
    assert route["cost_usd"] > 0  # the gpt-4o-mini answer that failed its check
    assert route["saved_by_lever_usd"]["tier"] == pytest.approx(-route["cost_usd"])
    assert route["baseline_cost_usd"] == pytest.approx(0.0, abs=1e-12)
    assert "request failed" in gw.log()  # logged as every failure is (it was not)
    # booked under a model it asked for, not under the route's name as if it were a model
    assert "smart" not in {m["model"] for m in body["by_model"]}
