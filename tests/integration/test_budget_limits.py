"""Budgets through the official openai client, on a real redis-server: over the soft limit a
tenant is downgraded to the cheap tier, over the hard limit refused with 429 and Retry-After;
the spend survives a gateway restart and is shared by two gateway processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest
import redis as redis_lib

from tests.integration.conftest import GatewayFactory
from tests.integration.procs import Gateway, Simulator, local_config
from tests.services import RedisServer

pytestmark = pytest.mark.integration

SIM = "simulator"
MESSAGES: list[Any] = [{"role": "user", "content": "Summarise our refund policy for a customer."}]


@pytest.fixture
def clean_budgets(redis: RedisServer) -> Iterator[RedisServer]:
    """The session Redis without budget keys left by earlier tests."""
    client = redis_lib.Redis.from_url(redis.url)
    for key in client.scan_iter("thrifty:budget:*"):
        client.delete(key)
    client.close()
    yield redis


def config(simulator: Simulator, redis: RedisServer, **budgets: dict[str, Any]) -> dict[str, Any]:
    base = local_config(simulator.url)
    tenants = [
        {**t, **({"budget": budgets[t["name"]]} if t["name"] in budgets else {})}
        for t in base["tenants"]
    ]
    smart = {
        "name": "smart",
        "targets": [{"provider": SIM, "model": "gpt-4o"}],
        "tiering": {
            "tiers": [
                {
                    "name": "cheap",
                    "targets": [{"provider": SIM, "model": "gpt-4o-mini"}],
                    # only tagged requests, so that untagged ones show the downgrade
                    "rules": [{"metadata": {"tier": "cheap"}}],
                }
            ]
        },
    }
    return {
        "routes": [*base["routes"], smart],
        "tenants": tenants,
        "ledger": {"redisUrl": redis.url},
    }


def spent(gw: Gateway, key: str) -> float:
    body = httpx.get(
        f"{gw.base_url()}/thrifty/budgets", headers={"authorization": f"Bearer {key}"}
    ).json()
    return float(sum(b["spent_usd"] for b in body["data"]))


def wait_spend_above(gw: Gateway, key: str, floor: float) -> float:
    """Spend is added after the response: wait until it shows (bounded)."""
    deadline = time.monotonic() + 10
    while (value := spent(gw, key)) <= floor and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_soft_limit_downgrades_to_the_cheap_tier(
    gateway_factory: GatewayFactory, simulator: Simulator, clean_budgets: RedisServer
) -> None:
    budget = {"period": "day", "softLimitUsd": 0.0005, "hardLimitUsd": 100}
    gw = gateway_factory(**config(simulator, clean_budgets, **{"team-a": budget}))
    client = gw.openai("sk-local-a")

    first = client.chat.completions.with_raw_response.create(model="smart", messages=MESSAGES)
    assert first.headers["x-thrifty-tier"] == "route"
    assert "x-thrifty-budget" not in first.headers
    total = wait_spend_above(gw, "sk-local-a", 0.0)
    assert total > 0

    downgraded = None
    for _ in range(20):  # bounded: each gpt-4o answer costs ~$0.0004
        resp = client.chat.completions.with_raw_response.create(model="smart", messages=MESSAGES)
        if "x-thrifty-budget" in resp.headers:
            downgraded = resp
            break
        total = wait_spend_above(gw, "sk-local-a", total)
    assert downgraded is not None, "the soft limit never applied"
    assert downgraded.headers["x-thrifty-budget"] == "soft-limit; tenant=team-a"
    assert downgraded.headers["x-thrifty-tier"] == "cheap"
    assert downgraded.parse().model == "gpt-4o-mini"

    # team-b has no budget: untouched
    other = gw.openai("sk-local-b").chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES
    )
    assert other.headers["x-thrifty-tier"] == "route"

    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'thrifty_budget_limited_total{kind="soft",owner="team-a",scope="tenant"}' in metrics


def exhaust(gw: Gateway, key: str) -> openai.RateLimitError:
    """Send requests until the hard limit refuses one (bounded)."""
    client = gw.openai(key)
    total = 0.0
    for _ in range(30):
        try:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        except openai.RateLimitError as exc:
            return exc
        total = wait_spend_above(gw, key, total)
    raise AssertionError("the hard limit never applied")


def assert_budget_refusal(exc: openai.RateLimitError) -> None:
    assert exc.status_code == 429
    error = exc.response.json()["error"]
    assert error["type"] == "insufficient_quota"
    assert error["code"] == "budget_exceeded"
    assert "team-b" in error["message"]
    assert exc.response.headers["x-should-retry"] == "false"  # spent until the period ends
    now = datetime.now(UTC)
    end_of_day = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    retry_after = int(exc.response.headers["retry-after"])
    assert abs(retry_after - (end_of_day - now).total_seconds()) < 60


def test_hard_limit_refuses_survives_restart_and_is_shared_by_replicas(
    gateway_factory: GatewayFactory, simulator: Simulator, clean_budgets: RedisServer
) -> None:
    budget = {"period": "day", "hardLimitUsd": 0.001}
    cfg = config(simulator, clean_budgets, **{"team-b": budget})
    first = gateway_factory(**cfg)
    second = gateway_factory(**cfg)  # a second replica on the same Redis

    # spend through the first replica only; the second one must refuse too
    assert_budget_refusal(exhaust(first, "sk-local-b"))
    with pytest.raises(openai.RateLimitError) as shared:
        second.openai("sk-local-b").chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert_budget_refusal(shared.value)
    # other tenants are not affected
    second.openai("sk-local-a").chat.completions.create(model="gpt-4o", messages=MESSAGES)

    budgets = httpx.get(
        f"{second.base_url()}/thrifty/budgets", headers={"authorization": "Bearer sk-local-admin"}
    ).json()["data"]
    assert [(b["owner"], b["state"]) for b in budgets] == [("team-b", "hard")]
    assert budgets[0]["spent_usd"] >= 0.001

    # restart every gateway: the spend is in Redis, the limit still holds
    first.stop()
    second.stop()
    restarted = gateway_factory(**cfg)
    with pytest.raises(openai.RateLimitError) as after_restart:
        restarted.openai("sk-local-b").chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert_budget_refusal(after_restart.value)


async def test_a_gateway_remembers_when_its_budget_keys_first_named_it(
    clean_budgets: RedisServer,
) -> None:
    """The moment is set once (its first start after the upgrade) and outlives restarts; it
    carries no TTL, so a volatile-lru Redis never evicts it."""
    from redis import asyncio as aioredis

    from thrifty_gateway.services.budgets.store import RedisSpendStore

    now = [1_800_000_000.0]
    client = aioredis.Redis.from_url(clean_budgets.url)
    first = RedisSpendStore(client, clock=lambda: now[0])
    assert await first.keys_named_since("ns/gw") == 1_800_000_000.0
    now[0] += 86_400
    restarted = RedisSpendStore(client, clock=lambda: now[0])
    assert await restarted.keys_named_since("ns/gw") == 1_800_000_000.0
    assert await restarted.keys_named_since("ns/other") == now[0]
    assert await client.ttl("thrifty:budget:ns/gw:since") == -1
    await client.aclose()


async def test_spend_never_expires_in_redis_and_is_dropped_after_its_period(
    clean_budgets: RedisServer,
) -> None:
    """The cache's Redis evicts keys that have a TTL (volatile-lru): spend carries none, and
    a day after its period it is deleted by the writers."""
    from redis import asyncio as aioredis

    from thrifty_gateway.services.budgets.store import EXPIRY_GRACE_SECONDS, RedisSpendStore

    now = [1_800_000_000.0]
    client = aioredis.Redis.from_url(clean_budgets.url)
    store = RedisSpendStore(client, clock=lambda: now[0])
    await store.add([("thrifty:budget:tenant:a:day:old", now[0] + 3600)], 1.5)
    assert store._cleanup is not None
    await store._cleanup  # the cleanup runs beside the request, not in it
    assert await client.ttl("thrifty:budget:tenant:a:day:old") == -1
    assert await store.get(["thrifty:budget:tenant:a:day:old"]) == [1.5]
    now[0] += 3600 + EXPIRY_GRACE_SECONDS + 1  # the period and its grace day are over
    await store.add([("thrifty:budget:tenant:a:day:new", now[0] + 3600)], 0.25)
    assert store._cleanup is not None
    await store._cleanup
    assert await store.get(["thrifty:budget:tenant:a:day:old"]) == [0.0]
    assert await client.exists("thrifty:budget:tenant:a:day:old") == 0
    assert await store.get(["thrifty:budget:tenant:a:day:new"]) == [0.25]
    await store.aclose()


def test_a_hung_redis_costs_budgeted_requests_a_few_timeouts_not_one_each(
    gateway_factory: GatewayFactory, simulator: Simulator, tmp_path: Any
) -> None:
    """Redis stops answering (SIGSTOP). Budgeted requests under their limit go on (checked
    against the replica's copy of the spend), and only the first few wait for a budget-store
    timeout: then the store cools down instead of making every request wait a socket timeout;
    reading the budgets answers 503, not 500."""
    import signal

    from tests.services import start_redis
    from thrifty_gateway.services.budgets.store import FAILURES

    own = start_redis(tmp_path / "redis")
    try:
        budget = {"period": "day", "hardLimitUsd": 5}
        gw = gateway_factory(**config(simulator, own, **{"team-a": budget}))
        client = gw.openai("sk-local-a")
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        own.proc.send_signal(signal.SIGSTOP)
        for _ in range(FAILURES):  # the timeouts before the breaker opens
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        started = time.monotonic()
        for _ in range(10):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert time.monotonic() - started < 1.5
        status = httpx.get(
            f"{gw.base_url()}/thrifty/budgets", headers={"authorization": "Bearer sk-local-a"}
        )
        assert status.status_code == 503, status.text
        assert status.json()["error"]["code"] == "budget_store_unavailable"
        own.proc.send_signal(signal.SIGCONT)
        client.close()
    finally:
        own.proc.send_signal(signal.SIGCONT)
        own.kill()


async def test_a_slow_read_does_not_stop_spend_from_being_written(tmp_path: Any) -> None:
    """Budget reads miss their short timeout (Redis paused for a moment) until the reads cool
    down, but the spend of the requests right after is still written (it would be lost)."""
    import signal

    from redis import asyncio as aioredis

    from tests.services import start_redis
    from thrifty_gateway.services.budgets.store import (
        FAILURES,
        RedisSpendStore,
        SpendStoreUnavailable,
    )

    own = start_redis(tmp_path / "redis")
    store = RedisSpendStore(aioredis.Redis.from_url(own.url))
    try:
        own.proc.send_signal(signal.SIGSTOP)
        for _ in range(FAILURES):
            with pytest.raises(SpendStoreUnavailable):
                await store.get(["thrifty:budget:tenant:a:day:x"])
        own.proc.send_signal(signal.SIGCONT)
        for _ in range(5):
            await store.add([("thrifty:budget:tenant:a:day:x", time.time() + 3600)], 1.0)
        with pytest.raises(SpendStoreUnavailable):  # reads are still cooling down
            await store.get(["thrifty:budget:tenant:a:day:x"])
        check = redis_lib.Redis.from_url(own.url)
        assert float(check.get("thrifty:budget:tenant:a:day:x") or 0) == 5.0
        check.close()
    finally:
        own.proc.send_signal(signal.SIGCONT)
        await store.aclose()
        own.kill()
