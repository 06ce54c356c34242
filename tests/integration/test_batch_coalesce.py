"""Embeddings coalescing through the gateway: concurrent single-input callers become a few
upstream calls, and each caller gets exactly its own embedding back."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.procs import Simulator

pytestmark = pytest.mark.integration
KEY = "sk-local-a"
MODEL = "text-embedding-3-small"


async def _embed_all(
    url: str, texts: list[str], keys: list[str] | None = None
) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=20) as client:

        async def one(text: str, key: str) -> httpx.Response:
            resp = await client.post(
                "/v1/embeddings",
                json={"model": MODEL, "input": text},
                headers={"authorization": f"Bearer {key}"},
            )
            assert resp.status_code == 200, resp.text
            return resp

        return await asyncio.gather(
            *(one(t, k) for t, k in zip(texts, keys or [KEY] * len(texts), strict=True))
        )


def test_concurrent_embeddings_are_coalesced_and_split_back(
    gateway_factory: GatewayFactory, simulator: Simulator
) -> None:
    gw = gateway_factory(batch={"name": "coalesce", "coalesceWindowMs": 20})
    texts = [f"document number {i} about invoices" for i in range(64)]
    before = simulator.stats()["requests"].get(MODEL, 0)
    answers = [r.json() for r in asyncio.run(_embed_all(gw.url, texts))]
    calls = simulator.stats()["requests"].get(MODEL, 0) - before
    assert calls <= 6  # 64 callers -> at least 10x fewer upstream calls
    direct = httpx.post(
        f"{simulator.url}/v1/embeddings", json={"model": MODEL, "input": texts[5]}
    ).json()
    assert answers[5]["data"][0]["embedding"] == direct["data"][0]["embedding"]
    assert all(len(a["data"]) == 1 and a["data"][0]["index"] == 0 for a in answers)
    assert all(a["usage"]["prompt_tokens"] > 0 for a in answers)


def test_list_input_keeps_its_order(gateway_factory: GatewayFactory, simulator: Simulator) -> None:
    gw = gateway_factory(batch={"name": "coalesce-list", "coalesceWindowMs": 5})
    texts = ["alpha", "beta", "gamma"]
    resp = httpx.post(
        f"{gw.url}/v1/embeddings",
        json={"model": MODEL, "input": texts},
        headers={"authorization": f"Bearer {KEY}"},
    ).json()
    direct = httpx.post(
        f"{simulator.url}/v1/embeddings", json={"model": MODEL, "input": texts}
    ).json()
    assert [d["embedding"] for d in resp["data"]] == [d["embedding"] for d in direct["data"]]
    assert [d["index"] for d in resp["data"]] == [0, 1, 2]


def test_one_callers_bad_input_fails_only_that_caller(
    gateway_factory: GatewayFactory, simulator: Simulator
) -> None:
    """Callers of two tenants share a window. One sends an input the provider refuses (an empty
    string); another sends token arrays while the rest send text. Each gets what its own direct
    call gets: the bad input a 400, every other caller its embedding."""
    gw = gateway_factory(batch={"name": "coalesce-bad", "coalesceWindowMs": 200})

    async def scenario() -> tuple[httpx.Response, ...]:
        async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:

            async def one(key: str, value: Any) -> httpx.Response:
                return await client.post(
                    "/v1/embeddings",
                    json={"model": MODEL, "input": value},
                    headers={"authorization": f"Bearer {key}"},
                )

            # Warm the window up: coalescing waits only when there was company last time.
            await asyncio.gather(one(KEY, "warm one"), one("sk-local-b", "warm two"))
            return tuple(
                await asyncio.gather(
                    one(KEY, "hello there"),
                    one(KEY, "general kenobi"),
                    one("sk-local-b", [""]),
                    one("sk-local-b", [15339, 1917]),
                )
            )

    hello, kenobi, empty, tokens = asyncio.run(scenario())
    assert empty.status_code == 400, empty.text
    assert empty.json()["error"]["type"] == "invalid_request_error"
    for resp, value in (
        (hello, "hello there"),
        (kenobi, "general kenobi"),
        (tokens, [15339, 1917]),
    ):
        assert resp.status_code == 200, resp.text
        direct = httpx.post(
            f"{simulator.url}/v1/embeddings", json={"model": MODEL, "input": value}
        ).json()
        assert resp.json()["data"][0]["embedding"] == direct["data"][0]["embedding"]
        assert resp.json()["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"]


def test_two_tenants_embeddings_are_never_coalesced_together(
    gateway_factory: GatewayFactory,
) -> None:
    """One call's usage is split among its callers by an estimate: coalesced together, a
    tenant whose input has many tokens per character would pass its cost to the other."""
    gw = gateway_factory(batch={"name": "coalesce-tenants", "coalesceWindowMs": 200})
    texts = [f"statement {i} for the quarter" for i in range(16)]
    keys = ["sk-local-a", "sk-local-b"] * 8
    answers = asyncio.run(_embed_all(gw.url, texts, keys))
    together = [int(r.headers.get("x-thrifty-coalesced", "1")) for r in answers]
    assert max(together) > 1  # each tenant's requests are still coalesced...
    assert max(together) <= 8  # ...but only with that tenant's own
