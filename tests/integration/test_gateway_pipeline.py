"""The stage contract: a stage answering before the provider (a small exact cache written
against services/pipeline.py), after-hooks seeing assembled streams, and the ledger crediting
the lever. The app runs in-process; the provider is the simulator process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from fastapi.testclient import TestClient

from tests.integration.procs import Simulator, local_config
from tests.integration.waiting import wait_until
from tests.services import start_redis
from thrifty_core.config import parse_config
from thrifty_gateway.app import create_app
from thrifty_gateway.services.pipeline import Outcome, RequestContext, Stage, StageResponse
from thrifty_gateway.services.sse import usage_of

pytestmark = pytest.mark.integration


class DictCache:
    """An exact cache keyed by model + messages, filled by the after-hook."""

    name = "dict-cache"

    def __init__(self) -> None:
        self.store: dict[bytes, dict[str, Any]] = {}
        self.outcomes: list[Outcome] = []

    @staticmethod
    def key(ctx: RequestContext) -> bytes:
        return orjson.dumps([ctx.route.name, ctx.body.get("messages")])

    async def before_upstream(self, ctx: RequestContext) -> StageResponse | None:
        hit = None if ctx.cache_control.no_cache else self.store.get(self.key(ctx))
        if hit is None:
            return None
        usage = usage_of(hit)
        assert usage is not None
        return StageResponse(
            lever="cache",
            body=hit,
            usage=usage,
            model=str(hit.get("model", "")),
            served_by="cache:dict",
            saved_usd=ctx.baseline_cost(usage),
        )

    async def after_upstream(self, ctx: RequestContext, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        if not outcome.from_stage and outcome.status == 200 and outcome.body:
            self.store[self.key(ctx)] = outcome.body


@pytest.fixture
def cached(simulator: Simulator) -> Iterator[tuple[openai.OpenAI, DictCache, TestClient]]:
    cache = DictCache()

    async def factory(config: Any, state: Any) -> Stage:
        del config, state
        return cache

    app = create_app(parse_config(local_config(simulator.url)), stage_factories=[factory])
    with TestClient(app) as http:
        client = openai.OpenAI(
            base_url="http://testserver/v1", api_key="sk-local-a", http_client=http, max_retries=0
        )
        yield client, cache, http
        client.close()


def test_stage_answers_and_ledger_credits_the_lever(
    cached: tuple[openai.OpenAI, DictCache, TestClient],
) -> None:
    client, cache, http = cached
    messages: list[Any] = [{"role": "user", "content": "What is the fee for a wire transfer?"}]
    miss = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages)
    assert miss.headers["x-thrifty-upstream"] == "simulator/gpt-4o"
    wait_until(lambda: len(cache.store) == 1, "the after-hook stored the answer")
    hit = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages)
    assert hit.headers["x-thrifty-upstream"] == "cache:dict"
    assert float(hit.headers["x-thrifty-cost-usd"]) == 0.0
    assert hit.parse().choices[0].message.content == miss.parse().choices[0].message.content
    streamed = list(client.chat.completions.create(model="gpt-4o", messages=messages, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == miss.parse().choices[0].message.content
    bypass = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=messages, extra_headers={"x-thrifty-cache": "no-cache"}
    )
    assert bypass.headers["x-thrifty-upstream"] == "simulator/gpt-4o"

    def totals() -> dict[str, Any]:
        usage = http.get("/v1/thrifty/usage", headers={"authorization": "Bearer sk-local-a"})
        data: dict[str, Any] = usage.json()["totals"]
        return data

    wait_until(lambda: totals()["requests"] >= 4, "the ledger holds the 4 requests")
    figures = totals()
    miss_cost = float(miss.headers["x-thrifty-cost-usd"])
    assert figures["requests"] == 4
    assert figures["served_by_lever"]["cache"] == 2
    assert figures["saved_by_lever_usd"]["cache"] == pytest.approx(2 * miss_cost)
    assert figures["cost_usd"] == pytest.approx(2 * miss_cost)
    assert figures["baseline_cost_usd"] == pytest.approx(4 * miss_cost)


def test_after_hook_sees_assembled_streams(
    cached: tuple[openai.OpenAI, DictCache, TestClient],
) -> None:
    client, cache, _ = cached
    messages: list[Any] = [{"role": "user", "content": "Can I freeze my card from the app?"}]
    chunks = list(
        client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    wait_until(lambda: len(cache.outcomes) >= 1, "the after-hook saw the streamed answer")
    outcome = cache.outcomes[0]
    assert outcome.body is not None
    assert outcome.body["choices"][0]["message"]["content"] == text
    assert outcome.usage.completion_tokens > 0
    assert outcome.served_by == "simulator/gpt-4o-mini"


class SlowHook:
    """An after-hook that takes a while (a store on a busy Redis, say)."""

    name = "slow-hook"

    def __init__(self) -> None:
        self.finished = 0

    async def before_upstream(self, ctx: RequestContext) -> StageResponse | None:
        del ctx
        return None

    async def after_upstream(self, ctx: RequestContext, outcome: Outcome) -> None:
        del ctx, outcome
        await asyncio.sleep(0.3)
        self.finished += 1


def test_shutdown_waits_for_the_work_after_the_last_streams(
    simulator: Simulator, tmp_path: Path
) -> None:
    """A rolling update stops a replica right after its last streams end. What follows a stream
    (after-hooks, the ledger entry) runs in its own task, so that a client hanging up cannot
    cancel it; shutdown waits for those tasks before it closes the ledger, so the shared ledger
    counts every request the replica answered."""
    server = start_redis(tmp_path / "redis")
    hook = SlowHook()

    async def factory(config: Any, state: Any) -> Stage:
        del config, state
        return hook

    config = parse_config(local_config(simulator.url, ledger={"redisUrl": server.url}))
    try:
        with TestClient(create_app(config, stage_factories=[factory])) as http:
            client = openai.OpenAI(
                base_url="http://t/v1", api_key="sk-local-a", http_client=http, max_retries=0
            )
            for i in range(3):
                chunks = client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"Summarise ticket {i}"}],
                    stream=True,
                )
                assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            client.close()
        assert hook.finished == 3
        # The replica is gone; another one reads what it left in Redis.
        with TestClient(create_app(config, stage_factories=[])) as other:
            usage = other.get(
                "/v1/thrifty/usage", headers={"authorization": "Bearer sk-local-admin"}
            ).json()
        assert usage["source"] == "redis"
        assert usage["totals"]["requests"] == 3
    finally:
        server.kill()
