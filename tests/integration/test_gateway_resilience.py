"""Upstream failures: a 429 storm retried then failed over, timeouts 504, 5xx 502."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.procs import Simulator

pytestmark = pytest.mark.integration

MESSAGES: list[Any] = [{"role": "user", "content": "Summarise my last invoice."}]


def _routes(base: list[dict[str, Any]], *extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [*base, *extra]


@pytest.fixture
def resilient(gateway_factory: GatewayFactory, simulator: Simulator) -> openai.OpenAI:
    from tests.integration.procs import local_config

    base = local_config(simulator.url)["routes"]
    gw = gateway_factory(
        routes=_routes(
            base,
            {
                "name": "storm",
                "maxRetries": 2,
                "targets": [
                    {"provider": "simulator", "model": "storm-model"},
                    {"provider": "simulator", "model": "gpt-4o-mini"},
                ],
            },
            {
                "name": "storm-only",
                "maxRetries": 1,
                "targets": [{"provider": "simulator", "model": "storm-model"}],
            },
            {
                "name": "slow",
                "timeoutSeconds": 0.5,
                "targets": [{"provider": "simulator", "model": "slow-model"}],
            },
            {
                "name": "broken",
                "maxRetries": 1,
                "targets": [{"provider": "simulator", "model": "broken-model"}],
            },
        )
    )
    return gw.openai("sk-local-a")


def test_429_storm_is_retried_then_failed_over(
    resilient: openai.OpenAI, simulator: Simulator
) -> None:
    before = simulator.stats()["requests"].get("storm-model", 0)
    raw = resilient.chat.completions.with_raw_response.create(model="storm", messages=MESSAGES)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-thrifty-route"] == "storm"
    assert raw.headers["x-thrifty-upstream"] == "simulator/gpt-4o-mini"
    # First attempt plus maxRetries=2 retries on the storming target, then the fallback.
    assert simulator.stats()["requests"]["storm-model"] - before == 3


def test_429_everywhere_is_429_with_retry_after(resilient: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        resilient.chat.completions.create(model="storm-only", messages=MESSAGES)
    assert info.value.status_code == 429
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_timeout_is_504(resilient: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        resilient.chat.completions.create(model="slow", messages=MESSAGES)
    assert info.value.status_code == 504
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "timeout_error"


def test_upstream_5xx_is_502(resilient: openai.OpenAI, simulator: Simulator) -> None:
    before = simulator.stats()["requests"].get("broken-model", 0)
    with pytest.raises(openai.APIStatusError) as info:
        resilient.chat.completions.create(model="broken", messages=MESSAGES)
    assert info.value.status_code == 502
    assert simulator.stats()["requests"]["broken-model"] - before == 2
