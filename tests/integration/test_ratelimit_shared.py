"""Tenant rate limits shared by every replica: two gateway processes on one real redis-server
enforce one budget; the scripts' bucket rules on Redis's clock; a dead Redis falls back to each
replica's own buckets and never fails a request."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
import redis as redis_lib
from prometheus_client import CollectorRegistry
from redis import asyncio as aioredis

from tests.integration.conftest import GatewayFactory
from tests.integration.procs import Gateway, Simulator, local_config
from tests.services import RedisServer, free_port
from thrifty_core.config import TenantConfig
from thrifty_core.errors import RateLimitError
from thrifty_gateway.services.auth import hash_key
from thrifty_gateway.services.ratelimit_shared import PREFIX, SharedLimiter, limit_keys

pytestmark = pytest.mark.integration

MESSAGES: list[Any] = [{"role": "user", "content": "Is there a limit?"}]


def _wipe(url: str) -> None:
    client = redis_lib.Redis.from_url(url)
    for key in client.scan_iter(f"{PREFIX}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def clean_limits(redis: RedisServer) -> Iterator[RedisServer]:
    """The session Redis without buckets left by earlier tests."""
    _wipe(redis.url)
    yield redis
    _wipe(redis.url)


@pytest.fixture
async def shared(clean_limits: RedisServer) -> AsyncIterator[SharedLimiter]:
    limiter = SharedLimiter(aioredis.Redis.from_url(clean_limits.url), CollectorRegistry())
    yield limiter
    await limiter.aclose()


def limited(**limits: int) -> TenantConfig:
    return TenantConfig(name="team-x", api_key_hashes=[hash_key("x")], **limits)


async def test_request_bucket_takes_and_refills_on_redis_time(
    shared: SharedLimiter, clean_limits: RedisServer
) -> None:
    tenant = limited(requests_per_minute=2)
    await shared.check(tenant)
    await shared.check(tenant)
    with pytest.raises(RateLimitError) as refused:
        await shared.check(tenant)
    assert refused.value.code == "requests_per_minute"
    assert 29 <= int(refused.value.headers["retry-after"]) <= 31
    key = shared.keys("team-x")[0]
    client = redis_lib.Redis.from_url(clean_limits.url)
    # No TTL: the cache's volatile-lru Redis never evicts a bucket (a fresh minute).
    assert client.ttl(key) == -1
    # Half a minute later (moved back on Redis's clock) one request is allowed again.
    client.hset(key, "t", str(float(client.hget(key, "t") or 0) - 30))
    await shared.check(tenant)
    with pytest.raises(RateLimitError):
        await shared.check(tenant)
    client.close()


async def test_token_debits_put_the_bucket_in_debt_until_it_refills(
    shared: SharedLimiter,
) -> None:
    tenant = limited(tokens_per_minute=100)
    await shared.check(tenant)
    await shared.record_tokens(tenant, 250)  # 150 in debt
    with pytest.raises(RateLimitError) as refused:
        await shared.check(tenant)
    assert refused.value.code == "tokens_per_minute"
    assert 90 <= int(refused.value.headers["retry-after"]) <= 92  # (150 + 1) tokens at 100/min
    # Other tenants and unlimited tenants are untouched.
    await shared.check(TenantConfig(name="other", api_key_hashes=[hash_key("o")]))
    await shared.check(
        TenantConfig(name="team-y", api_key_hashes=[hash_key("y")], tokens_per_minute=100)
    )


async def test_unreachable_redis_falls_back_to_this_replicas_buckets() -> None:
    registry = CollectorRegistry()
    dead = aioredis.Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.1, socket_timeout=0.1
    )
    limiter = SharedLimiter(dead, registry, cooldown=60.0)
    tenant = limited(requests_per_minute=2)
    await limiter.check(tenant)
    await limiter.check(tenant)
    with pytest.raises(RateLimitError):
        await limiter.check(tenant)  # the local bucket still limits
    # One failure opened the breaker: the later checks did not wait on Redis again.
    assert registry.get_sample_value("thrifty_ratelimit_shared_errors_total", {"op": "check"}) == 1
    await limiter.aclose()


async def test_a_cancelled_probe_does_not_leave_the_breaker_open_for_good(
    clean_limits: RedisServer,
) -> None:
    """The half-open probe's request is cancelled (its client hung up): the breaker must let the
    next call probe again, or the shared limits would never be used again."""
    import asyncio

    limiter = SharedLimiter(aioredis.Redis.from_url(clean_limits.url), CollectorRegistry())
    limiter._breaker.failure()  # opened by an earlier failure ...
    limiter._breaker.opened_at = time.monotonic() - 10  # ... and its cool-down is over
    tenant = limited(requests_per_minute=100)
    probe = asyncio.ensure_future(limiter.check(tenant))
    await asyncio.sleep(0)  # the probe is under way
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    await limiter.check(tenant)  # probes again, reaches Redis, closes the breaker
    assert limiter._breaker.state == "closed"
    await limiter.aclose()


def two_gateways(
    factory: GatewayFactory, simulator: Simulator, redis: RedisServer, **limits: int
) -> tuple[Gateway, Gateway]:
    """Two gateway processes sharing `redis`, team-b limited by `limits`."""
    tenants = local_config(simulator.url)["tenants"]
    tenants[1] = {**tenants[1], **limits}
    ledger = {"redisUrl": redis.url}
    return factory(tenants=tenants, ledger=ledger), factory(tenants=tenants, ledger=ledger)


def test_two_gateways_share_one_request_budget(
    gateway_factory: GatewayFactory, simulator: Simulator, clean_limits: RedisServer
) -> None:
    one, two = two_gateways(gateway_factory, simulator, clean_limits, requestsPerMinute=3)
    on_one, on_two = one.openai("sk-local-b"), two.openai("sk-local-b")
    on_one.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    on_two.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    on_one.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    # Per replica each would allow 3; together they have spent the tenant's 3.
    for client in (on_two, on_one):
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert info.value.code == "requests_per_minute"
        assert 1 <= int(info.value.response.headers["retry-after"]) <= 20
    # Another tenant on the same gateways is not affected.
    assert (
        two.openai("sk-local-a")
        .chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        .choices
    )


def test_tokens_used_through_one_gateway_count_on_the_other(
    gateway_factory: GatewayFactory, simulator: Simulator, clean_limits: RedisServer
) -> None:
    one, two = two_gateways(gateway_factory, simulator, clean_limits, tokensPerMinute=20)
    used = one.openai("sk-local-b").chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=100
    )
    assert used.usage is not None and used.usage.total_tokens > 21
    # The debit runs right after the response is sent.
    client = redis_lib.Redis.from_url(clean_limits.url)
    key = limit_keys("", "team-b")[1]
    deadline = time.monotonic() + 10
    while client.hget(key, "l") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # 20 tokens a minute, the answer's usage debited (plus what refilled meanwhile).
    level = float(client.hget(key, "l") or 0)
    assert 20 - used.usage.total_tokens <= level <= 20 - used.usage.total_tokens + 1
    client.close()
    with pytest.raises(openai.RateLimitError) as info:
        two.openai("sk-local-b").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.code == "tokens_per_minute"


def test_a_gateway_whose_redis_is_down_limits_on_its_own_and_fails_nothing(
    gateway_factory: GatewayFactory, simulator: Simulator
) -> None:
    tenants = local_config(simulator.url)["tenants"]
    tenants[1] = {**tenants[1], "requestsPerMinute": 4}
    gw = gateway_factory(tenants=tenants, ledger={"redisUrl": f"redis://127.0.0.1:{free_port()}/0"})
    b = gw.openai("sk-local-b")
    for _ in range(4):
        assert b.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
    with pytest.raises(openai.RateLimitError):
        b.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'thrifty_ratelimit_shared_errors_total{op="check"}' in metrics
