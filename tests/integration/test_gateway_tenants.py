"""Tenants: keys, rate limits, body size; the ledger; logs free of prompts and keys."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.procs import Gateway, Simulator
from tests.integration.waiting import wait_recorded

pytestmark = pytest.mark.integration

MESSAGES: list[Any] = [{"role": "user", "content": "What are your opening hours?"}]


def test_auth_refused_without_or_with_a_wrong_key(gateway: Gateway) -> None:
    no_key = httpx.post(
        f"{gateway.base_url()}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
    )
    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "invalid_request_error"
    wrong = gateway.openai("sk-wrong")
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert httpx.get(f"{gateway.base_url()}/models").status_code == 401


def test_open_route_needs_no_key(gateway_factory: GatewayFactory, simulator: Simulator) -> None:
    from tests.integration.procs import local_config

    routes = local_config(simulator.url)["routes"]
    routes[0] = {**routes[0], "open": True}
    gw = gateway_factory(routes=routes)
    ok = httpx.post(
        f"{gw.base_url()}/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES}
    )
    assert ok.status_code == 200
    closed = httpx.post(
        f"{gw.base_url()}/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES}
    )
    assert closed.status_code == 401
    # Which routes exist is not told to callers without a key: an unknown name answers as a
    # closed route does (with a key, it is the 404 it is).
    unknown = httpx.post(
        f"{gw.base_url()}/chat/completions", json={"model": "no-such", "messages": MESSAGES}
    )
    assert unknown.status_code == 401 and unknown.json() == closed.json()
    assert httpx.get(f"{gw.base_url()}/models/no-such").status_code == 401
    assert httpx.get(f"{gw.base_url()}/models/gpt-4o").status_code == 401
    assert httpx.get(f"{gw.base_url()}/models/gpt-4o-mini").status_code == 200
    keyed = {"authorization": "Bearer sk-local-a"}
    assert httpx.get(f"{gw.base_url()}/models/no-such", headers=keyed).status_code == 404


def test_tenant_over_its_rate_limit_gets_429_with_retry_after(
    gateway_factory: GatewayFactory, simulator: Simulator
) -> None:
    from tests.integration.procs import local_config

    tenants = local_config(simulator.url)["tenants"]
    tenants[1] = {**tenants[1], "requestsPerMinute": 2}
    gw = gateway_factory(tenants=tenants)
    b = gw.openai("sk-local-b")
    for _ in range(2):
        b.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as info:
        b.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    retry_after = int(info.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    # Another tenant is not affected.
    a = gw.openai("sk-local-a")
    assert a.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices


def test_token_rate_limit(gateway_factory: GatewayFactory, simulator: Simulator) -> None:
    from tests.integration.procs import local_config

    tenants = local_config(simulator.url)["tenants"]
    tenants[1] = {**tenants[1], "tokensPerMinute": 50}
    gw = gateway_factory(tenants=tenants)
    b = gw.openai("sk-local-b")
    b.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
    # The ledger and the token debit run right after the response is sent.
    wait_recorded(gw.url, 1, tenant="team-b")
    with pytest.raises(openai.RateLimitError) as info:
        b.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.response.headers["retry-after"]


def test_oversized_body_is_413_before_auth(
    gateway_factory: GatewayFactory, simulator: Simulator
) -> None:
    from tests.integration.procs import local_config

    server = {**local_config(simulator.url)["server"], "maxRequestBytes": 2048}
    gw = gateway_factory(server=server)
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 4096}]}
    resp = httpx.post(f"{gw.base_url()}/chat/completions", json=big)  # no key: 413 comes first
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(8):
            yield b"y" * 512
        yield b'"}]}'

    resp = httpx.post(
        f"{gw.base_url()}/chat/completions",
        content=chunked(),
        headers={"authorization": "Bearer sk-local-a", "content-type": "application/json"},
    )
    assert resp.status_code == 413
    small = gw.openai("sk-local-a")
    assert small.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices


def test_ledger_matches_provider_usage(gateway: Gateway) -> None:
    c = gateway.openai("sk-local-a")
    prompt = completion = 0
    cost = 0.0
    for i, model in enumerate(["gpt-4o-mini", "gpt-4o", "gpt-4o-mini"]):
        raw = c.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": f"Question number {i}?"}]
        )
        usage = raw.parse().usage
        assert usage is not None
        prompt += usage.prompt_tokens
        completion += usage.completion_tokens
        cost += float(raw.headers["x-thrifty-cost-usd"])
    streamed = list(
        c.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    last = streamed[-1].usage
    assert last is not None
    prompt += last.prompt_tokens
    completion += last.completion_tokens
    cost += (last.prompt_tokens * 2.5 + last.completion_tokens * 10.0) / 1e6
    wait_recorded(gateway.url, 4, tenant="team-a")
    usage = httpx.get(
        f"{gateway.base_url()}/thrifty/usage", headers={"authorization": "Bearer sk-local-a"}
    ).json()
    totals = usage["totals"]
    assert totals["requests"] == 4
    assert totals["prompt_tokens"] == prompt
    assert totals["completion_tokens"] == completion
    assert totals["cost_usd"] == pytest.approx(cost, rel=1e-6)
    assert totals["baseline_cost_usd"] == pytest.approx(cost, rel=1e-6)
    assert {r["route"] for r in usage["by_route"]} == {"gpt-4o-mini", "gpt-4o"}
    hourly = httpx.get(
        f"{gateway.base_url()}/thrifty/usage",
        params={"bucket": "hour", "since": "2020-01-01T00:00:00Z"},
        headers={"authorization": "Bearer sk-local-admin"},
    ).json()
    assert sum(b["requests"] for b in hourly["buckets"]) == 4
    # Tenant B sees none of tenant A's usage.
    other = httpx.get(
        f"{gateway.base_url()}/thrifty/usage", headers={"authorization": "Bearer sk-local-b"}
    ).json()
    assert other["totals"]["requests"] == 0
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'thrifty_cost_usd_total{model="gpt-4o",route="gpt-4o",tenant="team-a"}' in metrics


def test_logs_hold_no_prompts_completions_or_keys(
    gateway_factory: GatewayFactory, simulator: Simulator
) -> None:
    from tests.integration.procs import local_config

    base = local_config(simulator.url)["routes"]
    gw = gateway_factory(
        routes=[
            *base,
            {
                "name": "broken",
                "maxRetries": 0,
                "targets": [{"provider": "simulator", "model": "broken-model"}],
            },
        ],
        server={"accessLog": True},
    )
    secret_prompt = "zebra-orchid-prompt-7731 my card number is 4111"
    c = gw.openai("sk-local-a")
    answer = c.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": secret_prompt}]
    )
    text = answer.choices[0].message.content or ""
    list(
        c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": secret_prompt}], stream=True
        )
    )
    with pytest.raises(openai.APIStatusError):
        c.chat.completions.create(
            model="broken", messages=[{"role": "user", "content": secret_prompt}]
        )
    with pytest.raises(openai.AuthenticationError):
        gw.openai("sk-wrong-key-123").models.list()
    wait_recorded(gw.url, 3, tenant="team-a")  # the streamed answer's accounting is done too
    gw.stop()
    log = gw.log()
    assert "request failed" in log  # the failure was logged ...
    for needle in ("zebra-orchid", secret_prompt, text[:40], "sk-local-a", "sk-wrong-key"):
        assert needle not in log  # ... without what the request said or who held which key


def test_metrics_can_be_kept_to_the_admin(gateway_factory: GatewayFactory) -> None:
    """/metrics names tenants and their spend on the port tenants call: open by default (as
    Prometheus scrapes), admin-only with server.metricsNeedAdminKey."""
    open_gw = gateway_factory()
    assert httpx.get(f"{open_gw.url}/metrics").status_code == 200
    # a scraper's own token (a service-account token) is not a gateway key: not looked at
    scraper = {"authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.not-a-gateway-key"}
    assert httpx.get(f"{open_gw.url}/metrics", headers=scraper).status_code == 200
    closed = gateway_factory(server={"metricsNeedAdminKey": True})
    assert httpx.get(f"{closed.url}/metrics").status_code == 401
    tenant = httpx.get(f"{closed.url}/metrics", headers={"authorization": "Bearer sk-local-a"})
    assert tenant.status_code == 403
    admin = httpx.get(f"{closed.url}/metrics", headers={"authorization": "Bearer sk-local-admin"})
    assert admin.status_code == 200 and "thrifty_requests_total" in admin.text


def test_a_metrics_key_reads_metrics_and_nothing_else(gateway_factory: GatewayFactory) -> None:
    """A scraper gets a key of its own (`metricsKeys`, the LLMGateway's metricsKeySecretRef)
    rather than the admin key: it reads /metrics and is refused everywhere else."""
    key = "sk-metrics-scraper"
    digest = hashlib.sha256(key.encode()).hexdigest()
    gw = gateway_factory(
        server={"metricsNeedAdminKey": True}, metricsKeys={"apiKeyHashes": [digest]}
    )
    scraper = {"authorization": f"Bearer {key}"}
    got = httpx.get(f"{gw.url}/metrics", headers=scraper)
    assert got.status_code == 200 and "thrifty_requests_total" in got.text
    for method, path in (
        ("GET", "/v1/thrifty/usage"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/thrifty/cache/purge"),
    ):
        refused = httpx.request(method, f"{gw.url}{path}", headers=scraper, json={})
        assert refused.status_code == 403, (path, refused.text)
        assert refused.json()["error"]["message"] == "This key may only read /metrics."
