"""Tiered routing end to end (the real app in-process, a scripted provider): a request the
cheap model cannot take is answered by the route's model, a soft-limit downgrade keeps to what
the cheap tier can take, the tier reported (header, ledger, metric) is the one that answered,
and a provider's price override prices only that provider's answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.procs import local_config
from thrifty_core.config import parse_config
from thrifty_gateway.app import create_app
from thrifty_gateway.services.pipeline import Target
from thrifty_gateway.services.upstream import Timeouts, UpstreamResponse

pytestmark = pytest.mark.integration

Handler = Callable[[Target, dict[str, Any]], tuple[int, dict[str, Any]]]
ADMIN = {"authorization": "Bearer sk-local-admin"}
IMAGE: list[Any] = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ],
    }
]
MAX_TOKENS_ERROR = {
    "error": {
        "message": "max_tokens is too large: 32000. This model supports at most 16384",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "invalid_value",
    }
}


def answer(model: str, prompt: int = 100, completion: int = 50) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello there"},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


class Provider:
    """A scripted provider: `handler(target, body)` -> (status, body); streams when asked."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: list[str] = []

    async def send(
        self, target: Target, path: str, payload: bytes, timeouts: Timeouts, stream: bool
    ) -> UpstreamResponse:
        del path, timeouts
        self.calls.append(target.label)
        status, out = self.handler(target, orjson.loads(payload))
        if not stream or status >= 400:
            return UpstreamResponse(status, {}, body=orjson.dumps(out))

        async def chunks() -> AsyncIterator[bytes]:
            base = {"id": "x", "object": "chat.completion.chunk", "created": 1}
            delta = {"role": "assistant", "content": "hello there"}
            first = {**base, "model": out["model"], "choices": [{"index": 0, "delta": delta}]}
            yield b"data: " + orjson.dumps(first) + b"\n\n"
            last = {**base, "model": out["model"], "choices": [], "usage": out["usage"]}
            yield b"data: " + orjson.dumps(last) + b"\n\ndata: [DONE]\n\n"

        return UpstreamResponse(status, {}, chunks=chunks())

    async def aclose(self) -> None:
        return None


@asynccontextmanager
async def gateway(provider: Provider, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    config = parse_config(local_config("http://127.0.0.1:1", **overrides))
    app = create_app(config, upstream=provider)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client


async def chat(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    body.setdefault("model", "smart")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return await client.post(
        "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-local-a"}
    )


async def settled(client: httpx.AsyncClient, requests: int) -> dict[str, Any]:
    """The ledger totals once `requests` are booked (after the response)."""
    for _ in range(200):
        totals: dict[str, Any] = (await client.get("/v1/thrifty/usage", headers=ADMIN)).json()[
            "totals"
        ]
        if totals["requests"] >= requests:
            return totals
        await asyncio.sleep(0.01)
    raise AssertionError("the ledger never booked the requests")


def smart(tiering: dict[str, Any], targets: list[str] | None = None) -> list[dict[str, Any]]:
    own = [{"provider": "simulator", "model": m} for m in (targets or ["gpt-4o"])]
    return [{"name": "smart", "targets": own, "maxRetries": 0, "tiering": tiering}]


CHEAP = {"name": "cheap", "targets": [{"provider": "simulator", "model": "gpt-4o-mini"}]}


async def test_a_request_the_cheap_model_cannot_take_is_answered_by_the_routes_model() -> None:
    def handler(target: Target, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if target.model == "gpt-4o-mini" and body.get("max_tokens", 0) > 16384:
            return 400, MAX_TOKENS_ERROR
        return 200, answer(target.model)

    for cascade in (False, True):
        provider = Provider(handler)
        tiering: dict[str, Any] = {
            "tiers": [{**CHEAP, "rules": [{"maxPromptTokens": 500}]}],
            "cascade": {"enabled": cascade},
        }
        async with gateway(provider, routes=smart(tiering)) as client:
            # routed (no cascade), or a stream on a cascade route (routed too)
            resp = await chat(client, max_tokens=32000, stream=cascade)
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-thrifty-tier"] == "route"
            assert resp.headers["x-thrifty-upstream"] == "simulator/gpt-4o"
            assert provider.calls == ["simulator/gpt-4o-mini", "simulator/gpt-4o"]
            totals = await settled(client, 1)
            assert totals["served_by_tier"] == {"route": 1}


async def test_a_soft_limit_downgrade_keeps_to_what_the_cheap_tier_can_take() -> None:
    def handler(target: Target, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        has_image = any(isinstance(m["content"], list) for m in body["messages"])
        if target.model == "gpt-3.5-turbo" and has_image:
            return 400, {"error": {"message": "image_url is not supported by this model"}}
        return 200, answer(target.model)

    provider = Provider(handler)
    rules = [{"maxPromptTokens": 500, "hasImages": False, "metadata": {"tier": "cheap"}}]
    tiering = {
        "tiers": [
            {
                "name": "cheap",
                "targets": [{"provider": "simulator", "model": "gpt-3.5-turbo"}],
                "rules": rules,
            }
        ]
    }
    tenants = local_config("http://127.0.0.1:1")["tenants"]
    tenants[0] = {**tenants[0], "budget": {"period": "day", "softLimitUsd": 0.0001}}
    async with gateway(provider, routes=smart(tiering), tenants=tenants) as client:
        first = await chat(client, messages=IMAGE)
        assert first.headers["x-thrifty-tier"] == "route"
        await settled(client, 1)
        image = await chat(client, messages=IMAGE)
        assert image.status_code == 200, image.text
        assert image.headers["x-thrifty-budget"] == "soft-limit; tenant=team-a"
        assert image.headers["x-thrifty-tier"] == "route"
        text = await chat(client)  # untagged, but over the soft limit: as cheap as it can go
        assert text.headers["x-thrifty-tier"] == "cheap"
        assert provider.calls == [
            "simulator/gpt-4o",
            "simulator/gpt-4o",
            "simulator/gpt-3.5-turbo",
        ]


async def test_a_fallback_from_the_cheap_tier_is_reported_as_the_tier_that_answered() -> None:
    def handler(target: Target, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        del body
        if target.model == "gpt-4o-mini":
            return 503, {"error": {"message": "overloaded"}}
        return 200, answer(target.model, prompt=1000, completion=500)

    provider = Provider(handler)
    async with gateway(provider, routes=smart({"tiers": [CHEAP]})) as client:
        resp = await chat(client)
        assert resp.status_code == 200
        assert resp.headers["x-thrifty-tier"] == "route"
        assert resp.headers["x-thrifty-upstream"] == "simulator/gpt-4o"
        totals = await settled(client, 1)
        assert totals["served_by_tier"] == {"route": 1}
        assert totals["saved_by_lever_usd"].get("tier", 0.0) == 0.0
        metrics = (await client.get("/metrics", headers=ADMIN)).text
        assert 'thrifty_tier_decisions_total{reason="rules",route="smart",tier="route"} 1.0' in (
            metrics
        )
        assert 'tier="cheap"' not in metrics.split("thrifty_tier_decisions_total", 1)[1][:400]


async def test_the_cascade_does_not_return_the_rejected_cheap_answer_again() -> None:
    def handler(target: Target, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        del body
        if target.model == "gpt-4o":
            return 503, {"error": {"message": "overloaded"}}
        refusal = answer(target.model)
        refusal["choices"][0]["message"]["content"] = "I'm sorry, but I can't help with that."
        return 200, refusal

    provider = Provider(handler)
    tiering = {"tiers": [CHEAP], "cascade": {"enabled": True}}
    async with gateway(provider, routes=smart(tiering, ["gpt-4o", "gpt-4o-mini"])) as client:
        resp = await chat(client)
        assert resp.status_code == 502, resp.text
        assert provider.calls == ["simulator/gpt-4o-mini", "simulator/gpt-4o"]


async def test_a_providers_price_override_prices_only_its_own_answers() -> None:
    """A self-hosted gpt-4o-mini at $0 beside OpenAI's: OpenAI's answers cost list price."""
    provider = Provider(lambda target, _body: (200, answer(target.model, 1_000_000, 1_000_000)))
    providers = [
        {"name": "openai", "type": "openai-compatible", "baseUrl": "http://127.0.0.1:1/v1"},
        {
            "name": "vllm",
            "type": "openai-compatible",
            "baseUrl": "http://127.0.0.1:2/v1",
            "prices": [{"model": "gpt-4o-mini", "inputPerMTok": 0, "outputPerMTok": 0}],
        },
    ]
    routes = [
        {"name": "smart", "targets": [{"provider": "openai", "model": "gpt-4o-mini"}]},
        {"name": "local", "targets": [{"provider": "vllm", "model": "gpt-4o-mini"}]},
    ]
    async with gateway(provider, providers=providers, routes=routes) as client:
        paid = await chat(client)
        assert float(paid.headers["x-thrifty-cost-usd"]) == pytest.approx(0.75)
        free = await chat(client, model="local")
        assert float(free.headers["x-thrifty-cost-usd"]) == 0.0
        totals = await settled(client, 2)
        assert totals["cost_usd"] == pytest.approx(0.75)
        assert totals["baseline_cost_usd"] == pytest.approx(0.75)  # each route's own provider
