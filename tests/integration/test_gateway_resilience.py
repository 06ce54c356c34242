"""Upstream failures: a 429 storm retried then failed over, timeouts 504, 5xx 502."""

from __future__ import annotations

from pathlib import Path
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


def test_429s_never_open_the_circuit_for_everyone(
    resilient: openai.OpenAI, simulator: Simulator
) -> None:
    """A 429 is the provider answering "later" (one tenant's oversized requests, say): it must
    not count towards the breaker that every tenant's requests to that target go through."""
    before = simulator.stats()["requests"].get("storm-model", 0)
    for _ in range(7):
        with pytest.raises(openai.RateLimitError) as info:
            resilient.chat.completions.create(model="storm-only", messages=MESSAGES)
        assert info.value.code == "upstream_rate_limited"
    # every request reached the provider, with its retry: none was cut short by a breaker
    assert simulator.stats()["requests"]["storm-model"] - before == 14


def test_a_target_cooling_down_is_a_503_saying_when_to_come_back(
    resilient: openai.OpenAI,
) -> None:
    # 2 attempts each, counted once per request: the breaker opens after 5 failed requests,
    # not after the 5 attempts of 3 (one tenant's malformed requests, which a provider may
    # answer with a 500, must not open it for every tenant by their own retries)
    for _ in range(5):
        with pytest.raises(openai.APIStatusError) as info:
            resilient.chat.completions.create(model="broken", messages=MESSAGES)
        assert info.value.status_code == 502
    with pytest.raises(openai.APIStatusError) as info:
        resilient.chat.completions.create(model="broken", messages=MESSAGES)
    assert info.value.status_code == 503 and info.value.code == "upstream_circuit_open"
    assert 1 <= int(info.value.response.headers["retry-after"]) <= 30


def test_a_stream_cut_short_upstream_is_an_error_to_the_client(tmp_path: Path) -> None:
    """The provider stops half-way without [DONE], or drops the connection: the client's SDK
    raises (an error event) instead of taking the partial text for the answer, and the
    gateway logs a warning, not a traceback."""
    from tests.integration.procs import local_config, start_gateway, start_simulator

    sim = start_simulator(
        tmp_path / "sim", "--fault", "cut-model=cut-stream", "--fault", "abort-model=abort-stream"
    )
    config = local_config(sim.url)
    config["routes"] += [
        {"name": name, "targets": [{"provider": "simulator", "model": name}]}
        for name in ("cut-model", "abort-model")
    ]
    gw = start_gateway(tmp_path / "gw", config)
    try:
        client = gw.openai("sk-local-a")
        for model in ("cut-model", "abort-model"):
            text = ""
            with pytest.raises(openai.APIError) as info:
                for chunk in client.chat.completions.create(
                    model=model, messages=MESSAGES, stream=True
                ):
                    text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
            assert "stream from upstream" in str(info.value), model
            assert text  # the first half was relayed as it came
        log = gw.log()
        assert "Traceback" not in log
        # a clean early end or a dropped connection (the HTTP client may see either)
        said = log.count("upstream stream ended early") + log.count("upstream stream broke off")
        assert said == 2
    finally:
        gw.stop()
        sim.stop()


def test_a_provider_200_that_is_not_json_is_a_502_the_sdk_raises(tmp_path: Path) -> None:
    """A proxy in front of the provider answers 200 with an HTML page: passed on as a 200
    `application/json`, the SDK raised a JSONDecodeError, which no `except openai.APIError`
    catches. It is an upstream error, OpenAI-shaped."""
    from tests.integration.procs import local_config, start_gateway, start_simulator

    sim = start_simulator(tmp_path / "sim", "--fault", "portal=not-json")
    config = local_config(sim.url)
    config["routes"].append(
        {"name": "portal", "targets": [{"provider": "simulator", "model": "portal"}]}
    )
    gw = start_gateway(tmp_path / "gw", config)
    try:
        with pytest.raises(openai.InternalServerError) as info:
            gw.openai("sk-local-a").with_options(max_retries=0).chat.completions.create(
                model="portal", messages=MESSAGES
            )
        assert info.value.status_code == 502
        body = info.value.body
        assert isinstance(body, dict) and body["type"] == "upstream_error"
        assert "answered HTTP 200 with a body that is not a JSON object" in body["message"]
    finally:
        gw.stop()
        sim.stop()


def test_a_stream_opening_with_an_error_event_fails_over_like_a_5xx(tmp_path: Path) -> None:
    """The provider answers 200, then an error as its first event (an overload reported after
    the headers): nothing reached the client yet, so the next target answers."""
    from tests.integration.procs import local_config, start_gateway, start_simulator

    sim = start_simulator(tmp_path / "sim", "--fault", "overloaded=error-stream")
    config = local_config(sim.url)
    targets = [
        {"provider": "simulator", "model": "overloaded"},
        {"provider": "simulator", "model": "gpt-4o-mini"},
    ]
    config["routes"].append({"name": "spill", "maxRetries": 0, "targets": targets})
    gw = start_gateway(tmp_path / "gw", config)
    try:
        raw = gw.openai("sk-local-a").chat.completions.with_raw_response.create(
            model="spill", messages=MESSAGES, stream=True
        )
        assert raw.headers["x-thrifty-upstream"] == "simulator/gpt-4o-mini"
        text = "".join((c.choices[0].delta.content or "") for c in raw.parse() if c.choices)
        assert text
        assert sim.stats()["requests"]["overloaded"] == 1
    finally:
        gw.stop()
        sim.stop()


def test_every_answer_carries_a_request_id_its_log_lines_share(
    gateway_factory: GatewayFactory, simulator: Simulator
) -> None:
    """Errors carry `x-request-id` too (a 401, a shape 400, an upstream 502), the client's own
    when it is a plain id and a new one when it is not (it would forge log fields), and the
    log lines written for the request carry it: the retries and the failure, not only the
    final line."""
    import httpx
    import orjson

    from tests.integration.procs import local_config

    base = local_config(simulator.url)["routes"]
    broken = {
        "name": "broken",
        "maxRetries": 1,
        "targets": [{"provider": "simulator", "model": "broken-model"}],
    }
    gw = gateway_factory(routes=_routes(base, broken))
    url = f"{gw.base_url()}/chat/completions"
    auth = {"authorization": "Bearer sk-local-a"}
    body = {"model": "broken", "messages": MESSAGES}
    with httpx.Client(timeout=20) as http:
        unauthorised = http.post(url, json=body)
        assert unauthorised.status_code == 401
        assert len(unauthorised.headers["x-request-id"]) == 16
        shape = http.post(url, json={"model": "broken", "messages": []}, headers=auth)
        assert shape.status_code == 400 and len(shape.headers["x-request-id"]) == 16
        forged = http.post(url, json=body, headers={**auth, "x-request-id": 'a\t"}{"x'})
        assert forged.headers["x-request-id"] != 'a\t"}{"x'
        failed = http.post(url, json=body, headers={**auth, "x-request-id": "probe-42.a:b"})
        assert failed.status_code == 502 and failed.headers["x-request-id"] == "probe-42.a:b"
    lines = [
        orjson.loads(line) for line in gw.log_path.read_bytes().splitlines() if line[:1] == b"{"
    ]
    mine = [line["msg"] for line in lines if line.get("request_id") == "probe-42.a:b"]
    assert mine.count("upstream attempt failed") == 2  # the attempt and its retry
    assert "request failed" in mine
