"""The shared ledger: two gateway processes with `ledger.redisUrl` on one real redis-server;
traffic through both, and /v1/thrifty/usage from either shows the total of both (and survives
a restart). Without Redis reachable a gateway keeps counting its own traffic in memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis as redis_lib
from redis import asyncio as aioredis

from tests.integration.conftest import GatewayFactory
from tests.integration.procs import Gateway, Simulator, local_config
from tests.services import RedisServer, free_port, start_redis

pytestmark = pytest.mark.integration

ADMIN = {"authorization": "Bearer sk-local-admin"}
MESSAGES: list[Any] = [{"role": "user", "content": "How much did this cost?"}]


@pytest.fixture
def clean_ledger(redis: RedisServer) -> Iterator[RedisServer]:
    """The session Redis without ledger or budget keys left by earlier tests (budget spend
    of a gateway run without a name counts as the "key of before" of every named one)."""
    client = redis_lib.Redis.from_url(redis.url)
    for pattern in ("thrifty:ledger:*", "thrifty:budget:*"):
        for key in client.scan_iter(pattern):
            client.delete(key)
    client.close()
    yield redis


def usage(gw: Gateway, key: str = "sk-local-admin", **params: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(
        f"{gw.base_url()}/thrifty/usage",
        headers={"authorization": f"Bearer {key}"},
        params=params,
    ).json()
    return body


def usage_until(gw: Gateway, requests: int) -> dict[str, Any]:
    """The usage once it counts `requests` (ledger writes follow the response)."""
    for _ in range(200):
        body = usage(gw)
        if body["totals"]["requests"] >= requests:
            return body
        time.sleep(0.05)
    return usage(gw)


def send(gw: Gateway, key: str, n: int) -> None:
    client = gw.openai(key)
    for _ in range(n):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def test_usage_from_either_gateway_shows_both(
    gateway_factory: GatewayFactory, clean_ledger: RedisServer
) -> None:
    ledger = {"redisUrl": clean_ledger.url}
    one = gateway_factory(ledger=ledger)
    two = gateway_factory(ledger=ledger)
    send(one, "sk-local-a", 3)
    send(two, "sk-local-a", 2)
    send(two, "sk-local-b", 1)

    seen = [usage_until(gw, 6) for gw in (one, two)]
    for body in seen:
        assert body["source"] == "redis"
        assert body["totals"]["requests"] == 6
        tenants = {row["tenant"]: row["requests"] for row in body["by_tenant"]}
        assert tenants == {"team-a": 5, "team-b": 1}
        assert body["totals"]["cost_usd"] > 0
    assert seen[0]["totals"]["cost_usd"] == pytest.approx(seen[1]["totals"]["cost_usd"])
    assert seen[0]["totals"]["prompt_tokens"] == seen[1]["totals"]["prompt_tokens"]

    # a tenant sees its own share of every replica's traffic; hourly buckets too
    mine = usage(one, "sk-local-b", bucket="hour")
    assert mine["totals"]["requests"] == 1
    assert [b["tenant"] for b in mine["buckets"]] == ["team-b"]

    # the figures outlive the gateways
    one.stop()
    two.stop()
    three = gateway_factory(ledger=ledger)
    assert usage(three)["totals"]["requests"] == 6


def test_two_gateways_on_one_redis_keep_their_tenants_apart(
    gateway_factory: GatewayFactory, simulator: Simulator, clean_ledger: RedisServer
) -> None:
    """Two LLMGateways (as the operator renders them, `ledger.gateway` = namespace/name) on one
    Redis, each with tenants team-a and team-b: neither sees the other's usage, limits the
    other's tenant or charges its budget."""
    tenants = local_config(simulator.url)["tenants"]
    tenants[0] = {**tenants[0], "budget": {"period": "day", "hardLimitUsd": 0.000001}}
    tenants[1] = {**tenants[1], "requestsPerMinute": 2}
    one = gateway_factory(
        tenants=tenants, ledger={"redisUrl": clean_ledger.url, "gateway": "ns-one/gw"}
    )
    two = gateway_factory(
        tenants=tenants, ledger={"redisUrl": clean_ledger.url, "gateway": "ns-two/gw"}
    )
    send(one, "sk-local-b", 2)
    with pytest.raises(openai.RateLimitError):  # team-b's 2 a minute, on one
        send(one, "sk-local-b", 1)
    send(two, "sk-local-b", 1)  # two's team-b is another tenant
    send(one, "sk-local-a", 1)  # over team-a's budget on one ...
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spent = httpx.get(f"{one.base_url()}/thrifty/budgets", headers=ADMIN)
        if spent.status_code == 200 and spent.json()["data"][0]["spent_usd"] > 0:
            break  # (a 503: the budget read missed its 0.1 s on a loaded box; asked again)
        time.sleep(0.05)
    with pytest.raises(openai.RateLimitError) as refused:
        send(one, "sk-local-a", 1)
    assert refused.value.code == "budget_exceeded"
    budgets = httpx.get(f"{two.base_url()}/thrifty/budgets", headers=ADMIN).json()
    assert [b["spent_usd"] for b in budgets["data"]] == [0.0]
    send(two, "sk-local-a", 1)  # ... not on two
    # Usage: each gateway's own (one's figures are written before two's are read).
    usage_until(one, 3)
    seen = usage_until(two, 2)
    assert {row["tenant"]: row["requests"] for row in seen["by_tenant"]} == {
        "team-a": 1,
        "team-b": 1,
    }
    client = redis_lib.Redis.from_url(clean_ledger.url)
    assert client.exists("thrifty:ledger:ns-one/gw:index", "thrifty:ledger:ns-two/gw:index") == 2
    assert not client.exists("thrifty:ledger:index")
    client.close()


def test_without_redis_a_gateway_counts_in_memory(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(ledger={"redisUrl": f"redis://127.0.0.1:{free_port()}/0"})
    send(gw, "sk-local-a", 2)
    body = usage_until(gw, 2)
    assert body["source"] == "memory"
    assert body["totals"]["requests"] == 2
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'thrifty_ledger_shared_errors_total{op="write"}' in metrics
    assert 'thrifty_ledger_shared_errors_total{op="read"}' in metrics


async def one_bucket_written(client: Any, now: list[float]) -> tuple[Any, Any]:
    """A writer (no gateway named, 2 hours' retention, clock `now[0]`) and the bucket of the
    hour it wrote one request to."""
    from prometheus_client import CollectorRegistry

    from thrifty_gateway.services.ledger import HOUR, Totals
    from thrifty_gateway.services.ledger_shared import SharedBuckets

    shared = SharedBuckets(client, CollectorRegistry(), retention_hours=2, clock=lambda: now[0])
    key = (int(now[0] // HOUR) * HOUR, "team-a", "r", "m")
    shared.add(key, Totals(requests=1))
    assert await shared.flush()
    return shared, key


async def test_buckets_never_expire_in_redis_and_are_dropped_after_the_retention(
    clean_ledger: RedisServer,
) -> None:
    """The cache's Redis evicts keys that have a TTL (volatile-lru): usage buckets carry none,
    and the writer deletes those past the retention itself."""
    from thrifty_gateway.services.ledger import HOUR, Totals
    from thrifty_gateway.services.ledger_shared import bucket_id, bucket_name

    now = [1_800_000_000.0]
    client = aioredis.Redis.from_url(clean_ledger.url)
    shared, old_key = await one_bucket_written(client, now)
    name = bucket_name(bucket_id(old_key))
    assert await client.ttl(name) == -1  # no TTL: never an eviction candidate
    now[0] += 4 * HOUR + 700  # past the retention and the cleanup interval
    new_key = (int(now[0] // HOUR) * HOUR, "team-a", "r", "m")
    shared.add(new_key, Totals(requests=2))
    assert await shared.flush()
    assert not await client.exists(name)
    assert [k for k, _ in await shared.read(None)] == [new_key]
    await shared.aclose()


async def test_a_gateway_named_writer_drops_the_buckets_of_before_the_upgrade_too(
    clean_ledger: RedisServer,
) -> None:
    """After an upgrade nobody writes the keys that named no gateway: the writer that names
    its gateway deletes their buckets once past the retention (not before)."""
    from prometheus_client import CollectorRegistry

    from thrifty_gateway.services.ledger import HOUR, Totals
    from thrifty_gateway.services.ledger_shared import SharedBuckets, bucket_id, bucket_name

    now = [1_800_000_000.0]
    client = aioredis.Redis.from_url(clean_ledger.url)
    before, old_key = await one_bucket_written(client, now)
    after = SharedBuckets(
        client, CollectorRegistry(), retention_hours=2, clock=lambda: now[0], gateway="ns/gw"
    )
    assert await after.read(None) == []  # its own keys only
    after.add(old_key, Totals(requests=5))
    assert await after.flush()  # a cleanup ran: the old bucket is within the retention
    assert [t.requests for _, t in await before.read(None)] == [1]
    now[0] += 4 * HOUR + 700  # past the retention and the cleanup interval
    after.add((int(now[0] // HOUR) * HOUR, "team-a", "r", "m"), Totals(requests=2))
    assert await after.flush()
    assert not await client.exists(bucket_name(bucket_id(old_key)), "thrifty:ledger:index")
    assert [t.requests for _, t in await after.read(None)] == [2]
    await after.aclose()


async def test_a_failed_cleanup_never_writes_a_delta_twice(
    clean_ledger: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client import CollectorRegistry

    from thrifty_gateway.services.ledger import HOUR, Totals
    from thrifty_gateway.services.ledger_shared import SharedBuckets

    client = aioredis.Redis.from_url(clean_ledger.url)
    shared = SharedBuckets(client, CollectorRegistry(), retention_hours=2)

    async def broken(_cutoff: float) -> None:
        raise ConnectionError("cleanup failed")

    monkeypatch.setattr(shared, "_drop_older_than", broken)
    key = (int(time.time() // HOUR) * HOUR, "team-a", "r", "m")
    shared.add(key, Totals(requests=1, cost_usd=1.0))
    assert await shared.flush()  # the write succeeded; its cleanup did not
    assert await shared.flush()
    ((_, totals),) = await shared.read(None)
    assert (totals.requests, totals.cost_usd) == (1, 1.0)
    await shared.aclose()


async def test_closing_during_a_background_write_loses_nothing(tmp_path: Path) -> None:
    """A replica shuts down while its background flush waits on a slow Redis: the write
    goes through once Redis answers instead of being cancelled with its batch."""
    import signal

    from prometheus_client import CollectorRegistry

    from thrifty_gateway.services.ledger import HOUR, Totals
    from thrifty_gateway.services.ledger_shared import SharedBuckets

    server = start_redis(tmp_path / "redis")
    try:
        shared = SharedBuckets(
            aioredis.Redis.from_url(server.url), CollectorRegistry(), retention_hours=2
        )
        server.proc.send_signal(signal.SIGSTOP)  # the next write hangs
        key = (int(time.time() // HOUR) * HOUR, "team-a", "r", "m")
        shared.add(key, Totals(requests=1, cost_usd=1.0))  # flushed in the background
        await asyncio.sleep(0.2)  # that flush now waits on Redis
        asyncio.get_running_loop().call_later(0.3, server.proc.send_signal, signal.SIGCONT)
        await shared.aclose()
        reader = SharedBuckets(
            aioredis.Redis.from_url(server.url), CollectorRegistry(), retention_hours=2
        )
        ((_, totals),) = await reader.read(None)
        assert (totals.requests, totals.cost_usd) == (1, 1.0)
        await reader.aclose()
    finally:
        server.proc.send_signal(signal.SIGCONT)
        server.kill()


def test_net_savings_count_the_running_cost_of_the_whole_window(
    simulator: Simulator, redis: RedisServer
) -> None:
    """A replica started a moment ago answers for every replica's savings since the first
    hour summed: the running cost set against them is over that window too, not over its own
    few seconds of life (which made net savings look like gross savings after every restart)."""
    from fastapi.testclient import TestClient

    from thrifty_core.config import parse_config
    from thrifty_gateway.app import create_app

    config = local_config(simulator.url, cache=True)
    config["ledger"] = {"redisUrl": redis.url, "gateway": f"ns/net-{time.time_ns()}"}
    config["netSavings"] = {
        "cpuHourUsd": 1.0,
        "memoryGibHourUsd": 0.0,
        "components": [{"name": "gateway", "lever": "gateway", "cpu": 1, "memoryGib": 0}],
    }
    parsed = parse_config(config)
    prefix = f"thrifty:ledger:{parsed.ledger.gateway}:"
    hour = (int(time.time()) // 3600 - 5) * 3600  # traffic recorded five hours ago
    member = orjson.dumps([hour, "team-a", "gpt-4o-mini", "gpt-4o-mini"])
    client = redis_lib.Redis.from_url(redis.url)
    client.hset(prefix.encode() + b"b:" + member, mapping={"requests": 1, "saved:cache": 2.0})
    client.zadd(prefix + "index", {member: hour})
    admin = {"authorization": "Bearer sk-local-admin"}
    with TestClient(create_app(parsed)) as gw:
        body = gw.get("/v1/thrifty/usage", headers=admin).json()
    client.close()
    net = body["net_savings"]
    assert body["from"] is not None and net["hours"] > 5.0
    assert net["running_cost_usd"]["gateway"] == pytest.approx(net["hours"] * 1.0, abs=1e-3)
    assert net["net_saved_usd"] < 0  # $2 saved against more than five hours at $1
