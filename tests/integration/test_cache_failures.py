"""The cache on a real redis-server: shared entries across gateway instances, Redis killed
mid-run (every request still succeeds, as a bypass), and aborted streams never stored."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from tests.integration.procs import Simulator, local_config, start_gateway, start_simulator
from tests.integration.waiting import wait_cache_stores, wait_recorded, wait_until
from tests.services import RedisServer, free_port, start_redis
from thrifty_core.config import parse_config
from thrifty_gateway.app import create_app

pytestmark = pytest.mark.integration


def redis_config(simulator_url: str, redis_url: str, semantic: bool = False) -> dict[str, Any]:
    policy: dict[str, Any] = {"stores": {"redisUrl": redis_url}}
    if semantic:
        policy["spec"] = {"semantic": {"enabled": True, "embedding": {}}}
    return {
        **local_config(simulator_url),
        "cachePolicies": {"default": policy},
        "defaultCachePolicy": "default",
    }


def memory_config(simulator_url: str) -> dict[str, Any]:
    """The local gateway with one cache policy on the embedded stores."""
    return {**local_config(simulator_url), "cachePolicies": {"p": {}}, "defaultCachePolicy": "p"}


def cache_stage_of(gw: TestClient) -> Any:
    """The running gateway's cache stage (to reach its stores)."""
    return next(s for s in gw.app.state.gateway.stages if s.name == "cache")  # type: ignore[attr-defined]


def ask(client: openai.OpenAI, text: str, **kwargs: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}], **kwargs
    )


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.kill()


def test_redis_entries_are_shared_by_gateways_and_isolated_by_tenant(
    simulator: Simulator, redis: RedisServer
) -> None:
    config = parse_config(redis_config(simulator.url, redis.url))
    q = f"Where is my card? {uuid.uuid4().hex[:8]}"
    with TestClient(create_app(config)) as one, TestClient(create_app(config)) as two:
        a1 = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=one)
        a2 = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=two)
        b2 = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-b", http_client=two)
        assert ask(a1, q).headers["x-thrifty-cache"] == "miss"
        wait_cache_stores(one, 1)  # stored in Redis after the response
        assert ask(a2, q).headers["x-thrifty-cache"] == "exact"
        assert ask(b2, q).headers["x-thrifty-cache"] == "miss"
        purged = one.post(
            "/v1/thrifty/cache/purge",
            json={"tenant": "team-a"},
            headers={"authorization": "Bearer sk-local-admin"},
        )
        assert purged.status_code == 200 and purged.json()["exact"] >= 1
        assert ask(a2, q).headers["x-thrifty-cache"] == "miss"
        for c in (a1, a2, b2):
            c.close()


def test_killing_redis_mid_run_keeps_every_request_succeeding(
    simulator: Simulator, own_redis: RedisServer
) -> None:
    config = parse_config(redis_config(simulator.url, own_redis.url))
    prompts = [f"Question {i} {uuid.uuid4().hex[:6]}" for i in range(5)]
    with TestClient(create_app(config)) as http:
        client = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=http)
        for p in prompts:
            ask(client, p)
        wait_cache_stores(http, len(prompts))
        assert all(ask(client, p).headers["x-thrifty-cache"] == "exact" for p in prompts)
        own_redis.kill()
        started = time.monotonic()
        states = []
        for round_ in range(3):
            for p in prompts:
                resp = ask(client, p)
                assert resp.http_response.status_code == 200
                assert resp.parse().choices[0].message.content
                states.append(resp.headers["x-thrifty-cache"])
            del round_
        assert set(states) == {"bypass"}
        assert time.monotonic() - started < 10
        metrics = http.get("/metrics").text
        assert 'thrifty_cache_errors_total{layer="exact",op="get"}' in metrics
        client.close()


def test_a_hung_redis_is_bypassed_within_a_short_timeout(
    simulator: Simulator, own_redis: RedisServer
) -> None:
    config = parse_config(redis_config(simulator.url, own_redis.url))
    q = f"Is the branch open on Sunday? {uuid.uuid4().hex[:6]}"
    with TestClient(create_app(config)) as http:
        client = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=http)
        ask(client, q)
        wait_cache_stores(http, 1)
        assert ask(client, q).headers["x-thrifty-cache"] == "exact"
        own_redis.proc.send_signal(signal.SIGSTOP)  # alive but answering nothing
        try:
            for i in range(4):
                started = time.monotonic()
                resp = ask(client, f"{q} {i}")
                assert resp.http_response.status_code == 200
                assert resp.headers["x-thrifty-cache"] == "bypass"
                assert time.monotonic() - started < 2.0
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        client.close()


def test_aborted_streams_are_never_stored(tmp_path: Path) -> None:
    slow: Simulator = start_simulator(tmp_path / "sim", "--chunk-delay-ms", "40")
    gateway = start_gateway(
        tmp_path / "gw",
        {
            **local_config(slow.url),
            "cachePolicies": {"default": {}},
            "defaultCachePolicy": "default",
        },
    )
    try:
        client = gateway.openai("sk-local-a")
        q = f"Write a long answer about savings accounts {uuid.uuid4().hex[:6]}"
        messages: Any = [{"role": "user", "content": q}]
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
        first = next(iter(stream))
        assert first.choices
        stream.close()  # the client goes away mid-answer
        # The gateway sees the hang-up, then runs the after-hook (which must not store) and
        # records the aborted request in the ledger.
        wait_recorded(gateway.url, 1, tenant="team-a")
        # booked as the client's hang-up (499, as nginx does), not as an upstream failure (502)
        metrics = httpx.get(f"{gateway.url}/metrics").text
        requests = [ln for ln in metrics.splitlines() if ln.startswith("thrifty_requests_total{")]
        assert any('status="499"' in ln for ln in requests), requests
        assert not any('status="502"' in ln for ln in requests), requests
        again = ask(client, q)
        assert again.headers["x-thrifty-cache"] == "miss"
        wait_cache_stores(gateway.url, 1)
        assert ask(client, q).headers["x-thrifty-cache"] == "exact"  # complete answers are
        assert httpx.get(f"{gateway.url}/healthz").status_code == 200
    finally:
        gateway.stop()
        slow.stop()


def test_a_gateway_starts_and_answers_while_qdrant_is_unreachable(simulator: Simulator) -> None:
    """The semantic store is an optimisation: a gateway whose Qdrant is down (or still
    starting) starts, answers every request, and counts the bypassed lookups: one failure, then
    a cool-down that bypasses without trying (not one timeout per request), and the stores of
    the answers are skipped the same way."""
    dead = f"http://127.0.0.1:{free_port()}"
    config = parse_config(
        {
            **local_config(simulator.url),
            "cachePolicies": {
                "default": {
                    "spec": {"semantic": {"enabled": True, "embedding": {}}},
                    "stores": {"qdrantUrl": dead, "collection": "c"},
                }
            },
            "defaultCachePolicy": "default",
        }
    )
    with TestClient(create_app(config)) as gw:
        client = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=gw)
        for i in range(3):
            raw = ask(client, f"Is the semantic store needed? {i} {uuid.uuid4().hex[:6]}")
            assert raw.parse().choices[0].message.content
            assert raw.headers["x-thrifty-cache"] == "bypass"
        metrics = gw.get("/metrics").text
        assert 'thrifty_cache_errors_total{layer="semantic",op="search"} 1.0' in metrics
        assert 'thrifty_cache_lookups_total{layer="semantic",result="cooldown"} 2.0' in metrics
        assert 'thrifty_cache_stores_total{result="semantic_unavailable"} 3.0' in metrics
        client.close()


async def test_a_purge_of_a_big_redis_cache_completes_and_leaves_lookups_alone(
    own_redis: RedisServer,
) -> None:
    """100k entries of one tenant: the purge scans them page by page on its own connection
    (reading a whole index in one call used to exceed the lookups' 0.1 s timeout, fail the
    purge and cool the lookups down), removes them all, and a lookup right after still reaches
    Redis."""
    import os

    import redis as redis_lib

    from thrifty_gateway.services.cache.entry import CachedAnswer, Codec
    from thrifty_gateway.services.cache.exact import RedisExactStore
    from thrifty_gateway.services.cache.selector import Selector

    prefix, codec, n = "thrifty:cache:p/v1:", Codec(True), 100_000
    FIELDS = ("v", "tenant", "route", "model", "tags", "created")  # noqa: N806
    blob = codec.encode(CachedAnswer(body={"id": "x"}, tenant="team-a", route="r", model="m"))
    writer = redis_lib.Redis.from_url(own_redis.url)
    pipe = writer.pipeline(transaction=False)
    now = time.time()
    for i in range(n):  # what RedisExactStore.put writes, in bulk
        name = f"{prefix}h:{os.urandom(32).hex()}"
        labels = ("team-a", "r", "m", "", repr(now - i * 0.001))
        pipe.hset(name, mapping=dict(zip(FIELDS, (blob, *labels), strict=True)))
        pipe.expire(name, 3600)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    kept = CachedAnswer(body={"id": "kept"}, tenant="team-b", route="r", model="m")
    store = RedisExactStore(own_redis.url, prefix, codec, 1 << 20)
    try:
        await store.put("b" * 64, kept, 3600)
        assert await store.purge(Selector(tenant="team-a")) == n
        assert await store.get("0" * 64) is None  # reached Redis: no cool-down
        found = await store.get("b" * 64)
        assert found is not None and found.body == {"id": "kept"}
        # Only team-b's entry is left, the purge fence the purge advanced, and the purge's
        # record for other replicas' embedded indexes.
        assert sorted(writer.keys()) == [
            f"{prefix}h:{'b' * 64}".encode(),
            f"{prefix}purge-log".encode(),
            f"{prefix}purges".encode(),
        ]
        assert writer.get(f"{prefix}purges") == b"1"
        assert writer.xlen(f"{prefix}purge-log") == 1
        for key in ("purges", "purge-log"):
            assert writer.ttl(f"{prefix}{key}") == -1  # never expires, never evicted
    finally:
        await store.aclose()
        writer.close()


def test_a_purge_that_cannot_reach_a_store_says_so(simulator: Simulator) -> None:
    """Redis down: the purge answers 503 `purge_incomplete` naming the store (never a 200 that
    left entries behind), after purging what it could reach."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    config = parse_config(redis_config(simulator.url, dead))
    with TestClient(create_app(config)) as gw:
        resp = gw.post(
            "/v1/thrifty/cache/purge",
            json={"tenant": "team-a"},
            headers={"authorization": "Bearer sk-local-admin"},
        )
        assert resp.status_code == 503
        error = resp.json()["error"]
        assert error["code"] == "purge_incomplete" and "default (exact)" in error["message"]


async def test_a_full_redis_refusing_writes_keeps_serving_reads(own_redis: RedisServer) -> None:
    """A `noeviction` Redis at its maxmemory refuses writes (OOM): that is not an outage, so
    lookups of what it holds keep working (no cool-down)."""
    import os

    import redis as redis_lib

    from thrifty_gateway.services.cache.entry import CachedAnswer, Codec
    from thrifty_gateway.services.cache.exact import RedisExactStore, StoreUnavailable

    admin = redis_lib.Redis.from_url(own_redis.url)
    store = RedisExactStore(own_redis.url, "p:", Codec(False), 1 << 24, timeout=1.0)

    def answer() -> CachedAnswer:
        body = {"choices": [{"message": {"content": os.urandom(20_000).hex()}}]}
        return CachedAnswer(body=body, tenant="t", route="r", model="m")

    try:
        await store.put("hot", answer(), 3600)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", str(admin.info("memory")["used_memory"] + 200_000))
        with pytest.raises(StoreUnavailable):
            for i in range(100):
                await store.put(f"filler{i}", answer(), 3600)
        assert await store.get("hot") is not None
    finally:
        admin.config_set("maxmemory", "0")
        await store.aclose()
        admin.close()


async def test_under_memory_pressure_a_purge_by_tag_finds_every_answer_still_served(
    own_redis: RedisServer,
) -> None:
    """An entry and its purge labels are one key, evicted together: whatever eviction keeps,
    a purge finds. (With separate tag indexes, eviction dropped a quiet tag's index and its
    purge removed nothing, and indexes of evicted entries crowded the answers out.)"""
    import os

    import redis as redis_lib

    from thrifty_gateway.services.cache.entry import CachedAnswer, Codec
    from thrifty_gateway.services.cache.exact import RedisExactStore, StoreUnavailable
    from thrifty_gateway.services.cache.selector import Selector

    admin = redis_lib.Redis.from_url(own_redis.url)
    admin.config_set("maxmemory", "3mb")
    admin.config_set("maxmemory-policy", "volatile-lru")
    store = RedisExactStore(own_redis.url, "p:", Codec(False), 1 << 24, timeout=1.0)

    def answer(tags: tuple[str, ...] = ()) -> CachedAnswer:
        body = {"choices": [{"message": {"content": os.urandom(2000).hex()}}]}
        return CachedAnswer(body=body, tenant="t", route="r", model="m", tags=tags)

    try:
        for i in range(3000):  # far more than fits: Redis evicts all along
            try:
                await store.put(f"filler{i}", answer(), 3600)
            except StoreUnavailable:
                await asyncio.sleep(0.01)
        assert int(admin.info("stats")["evicted_keys"]) > 2000
        kept = admin.dbsize()
        for i in range(30):
            await store.put(f"tagged{i}", answer((f"doc-{i}",)), 3600)
        assert admin.dbsize() >= kept - 5  # no index crowding the answers out
        served = [i for i in range(30) if await store.get(f"tagged{i}") is not None]
        assert len(served) >= 20
        removed = 0
        for i in range(30):
            # Redis may still evict while the purge runs (its reads use memory too): a served
            # answer is either purged or already gone, never left behind.
            found = await store.purge(Selector(tag=f"doc-{i}"))
            assert found == 0 or (found == 1 and i in served)
            removed += found
            assert await store.get(f"tagged{i}") is None
        assert removed >= len(served) // 2
    finally:
        admin.config_set("maxmemory", "0")
        await store.aclose()
        admin.close()


def test_an_answer_in_flight_during_a_purge_is_not_stored(tmp_path: Path) -> None:
    """The purge ran while the request was upstream: its answer may be what the purge meant to
    remove, so it is served but not stored."""
    import threading

    slow: Simulator = start_simulator(tmp_path / "sim", "--latency-ms", "800")
    config = parse_config(memory_config(slow.url))
    try:
        with TestClient(create_app(config)) as gw:
            client = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=gw)
            q = f"Purged while upstream? {uuid.uuid4().hex[:6]}"
            fresh = f"Refreshed while purged? {uuid.uuid4().hex[:6]}"  # no-cache: no lookup
            answered: list[Any] = []
            asking = [
                threading.Thread(target=lambda: answered.append(ask(client, q))),
                threading.Thread(
                    target=lambda: answered.append(
                        ask(client, fresh, extra_headers={"cache-control": "no-cache"})
                    )
                ),
            ]
            for thread in asking:
                thread.start()
            time.sleep(0.3)  # the requests are at the (slow) provider
            purged = gw.post(
                "/v1/thrifty/cache/purge",
                json={"tenant": "team-a"},
                headers={"authorization": "Bearer sk-local-admin"},
            )
            assert purged.status_code == 200
            for thread in asking:
                thread.join()
            assert sorted(a.headers["x-thrifty-cache"] for a in answered) == ["bypass", "miss"]
            wait_cache_stores(gw, 2, result="purged")
            assert ask(client, q).headers["x-thrifty-cache"] == "miss"
            assert ask(client, fresh).headers["x-thrifty-cache"] == "miss"
            metrics = gw.get("/metrics").text
            assert 'thrifty_cache_stores_total{result="purged"} 2.0' in metrics
            client.close()
    finally:
        slow.stop()


def purged_while_upstream(slow: Simulator, other: TestClient, asking: Any) -> Any:
    """`asking()`'s answer, with team-a's entries purged through `other` while its request
    is at the (slow) provider."""
    from concurrent.futures import ThreadPoolExecutor

    before = sum(slow.stats()["requests"].values())
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(asking)
        wait_until(lambda: sum(slow.stats()["requests"].values()) > before, "the request upstream")
        purged = other.post(
            "/v1/thrifty/cache/purge",
            json={"tenant": "team-a"},
            headers={"authorization": "Bearer sk-local-admin"},
        )
        assert purged.status_code == 200
        return answer.result()


def test_a_purge_on_one_replica_fences_answers_in_flight_on_another(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    """Two gateways share a Redis. A purge on one while the other's request is upstream: the
    fence the purge advanced in Redis keeps that answer out of both layers."""
    slow: Simulator = start_simulator(tmp_path / "sim", "--latency-ms", "800")
    config = parse_config(redis_config(slow.url, own_redis.url, semantic=True))
    try:
        with TestClient(create_app(config)) as one, TestClient(create_app(config)) as two:
            a1 = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=one)
            q = f"Fenced while upstream? {uuid.uuid4().hex[:6]}"
            answered = purged_while_upstream(slow, two, lambda: ask(a1, q))
            assert answered.headers["x-thrifty-cache"] == "miss"
            wait_cache_stores(one, 1, result="purged")
            metrics = one.get("/metrics").text
            assert 'thrifty_cache_stores_total{result="exact"}' not in metrics
            assert 'thrifty_cache_stores_total{result="semantic"}' not in metrics
            # Not in Redis, nor in gateway one's semantic index (the same text would hit it).
            assert ask(a1, q).headers["x-thrifty-cache"] == "miss"
            wait_cache_stores(one, 1)  # asked again with no purge running: stored
            a2 = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=two)
            assert ask(a2, q).headers["x-thrifty-cache"] == "exact"
            a1.close()
            a2.close()
    finally:
        slow.stop()


def test_a_purge_on_one_replica_fences_semantic_only_answers_in_flight_on_another(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    """The same with the exact layer off (a semantic-only policy on a Qdrant server, which the
    replicas share; qdrant-client's in-memory mode stands for it, one per gateway): the fence
    lives in the policy's Redis, not in each process, so the purge on gateway two keeps
    gateway one's answer out."""
    slow: Simulator = start_simulator(tmp_path / "sim", "--latency-ms", "800")
    raw = redis_config(slow.url, own_redis.url, semantic=True)
    raw["cachePolicies"]["default"]["spec"]["exact"] = {"enabled": False}
    raw["cachePolicies"]["default"]["stores"]["qdrantUrl"] = ":memory:"
    config = parse_config(raw)
    try:
        with TestClient(create_app(config)) as one, TestClient(create_app(config)) as two:
            runtime = cache_stage_of(one).policies["default"]
            assert runtime.exact is None and runtime.fences is not None
            a1 = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=one)
            q = f"Semantic only, fenced while upstream? {uuid.uuid4().hex[:6]}"
            answered = purged_while_upstream(slow, two, lambda: ask(a1, q))
            assert answered.headers["x-thrifty-cache"] == "miss"
            wait_cache_stores(one, 1, result="purged")
            assert 'thrifty_cache_stores_total{result="semantic"}' not in one.get("/metrics").text
            assert ask(a1, q).headers["x-thrifty-cache"] == "miss"  # nothing was stored
            wait_cache_stores(one, 1, result="semantic")  # no purge running now: stored
            assert ask(a1, q).headers["x-thrifty-cache"] == "semantic"
            a1.close()
    finally:
        slow.stop()


def test_a_semantic_point_landing_after_a_purge_started_is_taken_back(
    simulator: Simulator, own_redis: RedisServer
) -> None:
    """The purge (on another replica) advanced the fence after this request's exact entry was
    stored but before its semantic point landed, and its semantic delete ran first: the point
    is taken back out, so the purge leaves nothing behind."""
    import redis

    config = parse_config(redis_config(simulator.url, own_redis.url, semantic=True))
    with TestClient(create_app(config)) as gw:
        stage = cache_stage_of(gw)
        runtime = stage.policies["default"]
        index = runtime.semantic
        assert index is not None
        real_add = index.add
        fence_key = f"thrifty:cache:{runtime.keyspace}:purges"
        other = redis.Redis.from_url(own_redis.url)

        def add_then_purge_elsewhere(*args: Any, **kwargs: Any) -> None:
            real_add(*args, **kwargs)
            other.incr(fence_key)  # another replica's purge starts now

        index.add = add_then_purge_elsewhere
        client = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=gw)
        q = f"Taken back out? {uuid.uuid4().hex[:6]}"
        ask(client, q)
        wait_cache_stores(gw, 1, result="purged")
        metrics = gw.get("/metrics").text
        assert 'thrifty_cache_stores_total{result="exact"} 1.0' in metrics
        assert 'thrifty_cache_stores_total{result="purged"} 1.0' in metrics
        assert index.count() == 0
        other.close()
        client.close()


async def test_an_allkeys_eviction_policy_is_flagged_at_start(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An external Redis under allkeys-* may evict the purge fence and, when shared, usage and
    spend: the gateway says so when it opens the store (CONFIG may be disabled: then nothing)."""
    import logging

    import redis as redis_lib

    from thrifty_gateway.services.cache.entry import Codec
    from thrifty_gateway.services.cache.exact import RedisExactStore

    admin = redis_lib.Redis.from_url(own_redis.url)
    store = RedisExactStore(own_redis.url, "p:", Codec(False), 1 << 20)
    try:
        admin.config_set("maxmemory-policy", "volatile-lru")
        with caplog.at_level(logging.WARNING):
            assert await store.eviction_policy() == "volatile-lru"
        assert "maxmemory-policy" not in caplog.text
        admin.config_set("maxmemory-policy", "allkeys-lru")
        with caplog.at_level(logging.WARNING):
            assert await store.eviction_policy() == "allkeys-lru"
        assert "maxmemory-policy is allkeys-lru" in caplog.text
    finally:
        await store.aclose()
        admin.close()
    down = RedisExactStore(f"redis://127.0.0.1:{free_port()}/0", "p:", Codec(False), 1 << 20)
    assert await down.eviction_policy() is None  # unreachable: no warning, no failure
    await down.aclose()


def test_a_stream_with_a_chunk_the_gateway_cannot_parse_is_relayed_but_never_stored(
    tmp_path: Path,
) -> None:
    """The provider streams an emoji as two chunks of lone UTF-16 surrogate escapes (valid
    JSON, refused by a strict UTF-8 parser). The client gets every chunk as sent; the gateway's
    assembled answer lacks that text, so it is never stored or replayed."""
    flawed: Simulator = start_simulator(tmp_path / "sim", "--fault", "gpt-4o-mini=split-emoji")
    config = parse_config(memory_config(flawed.url))
    try:
        with TestClient(create_app(config)) as gw:
            client = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=gw)
            messages: Any = [{"role": "user", "content": f"When will it ship? {uuid.uuid4()}"}]
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=messages, stream=True
            )
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            assert "\ud83d" in text and "\ude9a" in text  # relayed as the provider sent it
            wait_recorded(gw, 1)
            again = ask(client, messages[0]["content"])
            assert again.headers["x-thrifty-cache"] == "miss"
            client.close()
    finally:
        flawed.stop()


async def test_an_undecodable_redis_entry_is_a_miss_and_is_dropped(own_redis: RedisServer) -> None:
    import redis as redis_lib

    from thrifty_gateway.services.cache.entry import CachedAnswer, Codec
    from thrifty_gateway.services.cache.exact import RedisExactStore

    writer = redis_lib.Redis.from_url(own_redis.url)
    store = RedisExactStore(own_redis.url, "p:", Codec(True), 1 << 20)
    try:
        writer.hset("p:h:k", mapping={"v": b"\x28\xb5\x2f\xfd garbage", "tenant": "t"})
        assert await store.lookup("k") == (None, "0")
        assert writer.exists("p:h:k") == 0  # dropped: the next answer replaces it
        answer = CachedAnswer(body={"id": "ok"}, tenant="t", route="r", model="m")
        assert await store.put("k", answer, 60, "0") == "stored"
        found, _ = await store.lookup("k")
        assert found is not None and found.body == {"id": "ok"}
    finally:
        await store.aclose()
        writer.close()


def test_a_hung_qdrant_costs_one_timeout_not_one_per_request(simulator: Simulator) -> None:
    """Qdrant accepts connections and never answers. The first lookup times out and the layer
    cools down: the requests after it are neither slowed by it nor queued behind it, and their
    accounting is not held up by stores waiting on it."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    config = parse_config(
        {
            **local_config(simulator.url),
            "cachePolicies": {
                "default": {
                    "spec": {"semantic": {"enabled": True, "embedding": {}}},
                    "stores": {"qdrantUrl": f"http://127.0.0.1:{port}", "collection": "c"},
                }
            },
            "defaultCachePolicy": "default",
        }
    )
    try:
        with TestClient(create_app(config)) as gw:
            stage = cache_stage_of(gw)
            # Qdrant was up and its collection set up; then it hung: searches and upserts block.
            stage.policies["default"].semantic._ready = True
            client = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=gw)
            ask(client, f"Warm up {uuid.uuid4().hex[:6]}")  # the one timeout
            started = time.monotonic()
            for i in range(10):
                raw = ask(client, f"Is Qdrant answering? {i} {uuid.uuid4().hex[:6]}")
                assert raw.http_response.status_code == 200
                assert raw.headers["x-thrifty-cache"] == "bypass"
            wait_recorded(gw, 11)
            assert time.monotonic() - started < 1.5  # no lookup or store waited on Qdrant
            metrics = gw.get("/metrics").text
            assert 'thrifty_cache_lookups_total{layer="semantic",result="cooldown"} 10.0' in metrics
            client.close()
    finally:
        listener.close()


def test_identical_concurrent_misses_go_upstream_once(tmp_path: Path) -> None:
    """Nineteen identical requests arrive while the first is upstream: the others wait for its
    answer and are served it as exact hits, except streamed ones, which would get no token
    before the whole answer and go upstream themselves. Another tenant's identical request
    is not theirs to share."""
    from concurrent.futures import ThreadPoolExecutor

    slow: Simulator = start_simulator(tmp_path / "sim", "--latency-ms", "600")
    config = parse_config(memory_config(slow.url))
    try:
        with TestClient(create_app(config)) as gw:
            a = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=gw)
            b = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-b", http_client=gw)
            q = f"What is the daily ATM limit? {uuid.uuid4().hex[:6]}"

            def one(i: int) -> tuple[str, str]:
                if i == 19:  # another tenant
                    raw = ask(b, q)
                    return raw.headers["x-thrifty-cache"], raw.parse().choices[0].message.content
                if i % 5 == 4:  # streamed: not coalesced
                    raw = ask(a, q, stream=True)
                    text = "".join(
                        c.choices[0].delta.content or "" for c in raw.parse() if c.choices
                    )
                    return raw.headers["x-thrifty-cache"], text
                raw = ask(a, q)
                return raw.headers["x-thrifty-cache"], raw.parse().choices[0].message.content

            with ThreadPoolExecutor(20) as pool:
                leader = pool.submit(one, 0)
                deadline = time.monotonic() + 10
                # counted as it arrives, before its latency: the leader's flight is registered
                while time.monotonic() < deadline and not slow.stats()["requests"]:
                    time.sleep(0.01)
                rest = list(pool.map(one, range(1, 20)))
                results = [leader.result(), *rest]
            same_tenant = results[:19]
            streamed = [results[i] for i in (4, 9, 14)]
            followers = [r for i, r in enumerate(same_tenant) if i and i not in (4, 9, 14)]
            assert results[0][0] == "miss"
            assert [h for h, _ in followers] == ["exact"] * 15
            assert [h for h, _ in streamed] == ["miss"] * 3
            assert {text for _, text in followers} == {results[0][1]}  # the leader's answer
            assert results[19][0] == "miss"  # team-b went upstream on its own
            assert slow.stats()["requests"]["gpt-4o-mini"] == 5  # leader, 3 streams, team-b
            metrics = gw.get("/metrics").text
            assert 'thrifty_cache_lookups_total{layer="flight",result="coalesced"} 15.0' in metrics
            assert (
                'thrifty_cache_lookups_total{layer="flight",result="stream_not_coalesced"} 3.0'
                in metrics
            )
            a.close()
            b.close()
    finally:
        slow.stop()


def test_followers_are_served_when_the_leader_hangs_up(tmp_path: Path) -> None:
    """The first client gives up (its timeout) while its request is upstream. The gateway still
    finishes that request, so the identical request waiting behind it is served its answer as
    soon as the provider answers, and the provider is called once."""
    from concurrent.futures import ThreadPoolExecutor

    slow: Simulator = start_simulator(tmp_path / "sim", "--latency-ms", "2000")
    gw = start_gateway(tmp_path / "gw", memory_config(slow.url))
    try:
        q = f"What is the daily ATM limit? {uuid.uuid4().hex[:6]}"
        impatient = gw.openai("sk-local-a", timeout=0.3)
        patient = gw.openai("sk-local-a")

        def leader() -> str:
            try:
                ask(impatient, q)
            except openai.APITimeoutError:
                return "hung up"
            return "answered"

        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(leader)
            deadline = time.monotonic() + 10
            # The provider counts a request as it arrives, before its latency: the leader is
            # upstream (and its flight registered) once the count is 1.
            while time.monotonic() < deadline and not slow.stats()["requests"].get("gpt-4o-mini"):
                time.sleep(0.02)
            started = time.monotonic()
            raw = ask(patient, q)
            took = time.monotonic() - started
            assert first.result() == "hung up"
        assert raw.headers["x-thrifty-cache"] == "exact"
        assert took < 10  # the provider's 2 s, not the route's timeout
        assert slow.stats()["requests"]["gpt-4o-mini"] == 1
    finally:
        gw.stop()
        slow.stop()


def test_followers_of_a_failed_request_go_upstream_at_once(tmp_path: Path) -> None:
    """The request they waited for failed (the provider answers 500): nothing to share, so the
    identical requests behind it go upstream themselves right away, not after a timeout."""
    from concurrent.futures import ThreadPoolExecutor

    broken: Simulator = start_simulator(
        tmp_path / "sim", "--latency-ms", "300", "--fault", "gpt-4o-mini=500"
    )
    base = memory_config(broken.url)
    routes = [{**r, "maxRetries": 0} for r in base["routes"]]
    config = parse_config({**base, "routes": routes})
    try:
        with TestClient(create_app(config)) as gw:
            client = openai.OpenAI(
                base_url="http://t/v1", api_key="sk-local-a", http_client=gw, max_retries=0
            )
            q = f"Why is my transfer pending? {uuid.uuid4().hex[:6]}"

            def one(_: int) -> int:
                try:
                    ask(client, q)
                except openai.APIStatusError as exc:
                    return exc.status_code
                return 200

            started = time.monotonic()
            with ThreadPoolExecutor(5) as pool:
                statuses = list(pool.map(one, range(5)))
            assert time.monotonic() - started < 5  # not FOLLOW_TIMEOUT (30 s)
            assert all(s >= 500 for s in statuses)
            assert broken.stats()["requests"]["gpt-4o-mini"] == 5  # each tried for itself
            metrics = gw.get("/metrics").text
            assert (
                'thrifty_cache_lookups_total{layer="flight",result="follow_failed"} 4.0' in metrics
            )
            client.close()
    finally:
        broken.stop()


def test_while_redis_fails_identical_requests_do_not_wait_for_each_other(
    tmp_path: Path,
) -> None:
    """Without a readable purge fence no answer can be shared, so identical concurrent requests
    do not queue behind one another (each would wait for nothing, then go upstream anyway)."""
    from concurrent.futures import ThreadPoolExecutor

    slow: Simulator = start_simulator(tmp_path / "sim", "--latency-ms", "800")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    config = parse_config(redis_config(slow.url, dead))
    try:
        with TestClient(create_app(config)) as gw:
            client = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=gw)
            q = f"Is my card blocked? {uuid.uuid4().hex[:6]}"

            def one(_: int) -> float:
                started = time.monotonic()
                assert ask(client, q).headers["x-thrifty-cache"] == "bypass"
                return time.monotonic() - started

            with ThreadPoolExecutor(4) as pool:
                took = list(pool.map(one, range(4)))
            assert max(took) < 1.5  # one provider latency each, not two
            metrics = gw.get("/metrics").text
            assert 'layer="flight"' not in metrics  # nobody waited for anybody
            client.close()
    finally:
        slow.stop()


async def test_after_a_cool_down_one_lookup_probes_a_hung_redis_not_all(
    own_redis: RedisServer,
) -> None:
    """Redis hangs (SIGSTOP). When the cool-down ends, one lookup probes it; the others in
    flight at that moment keep bypassing at once instead of each waiting for a timeout."""
    import signal

    from thrifty_gateway.services.cache.entry import Codec
    from thrifty_gateway.services.cache.exact import RedisExactStore, StoreUnavailable

    store = RedisExactStore(own_redis.url, "p:", Codec(False), 1 << 20, timeout=0.1, cooldown=0.3)
    own_redis.proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable):
            await store.get("k")  # the failure that starts the cool-down
        await asyncio.sleep(0.35)  # the cool-down is over

        async def one() -> str:
            try:
                await store.get("k")
            except StoreUnavailable as exc:
                return str(exc)
            return "answered"

        outcomes = await asyncio.gather(*(one() for _ in range(10)))
        assert sorted(outcomes).count("redis cooling down (get)") == 9  # one probe only
        own_redis.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.35)
        assert await store.get("k") is None  # the next probe reaches Redis: closed again
        assert await store.get("k") is None
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
        await store.aclose()


def test_policies_of_the_same_name_in_two_namespaces_share_nothing(
    simulator: Simulator, redis: RedisServer
) -> None:
    """Two namespaces each have a CachePolicy `default` on one shared (external) Redis, with the
    same tenant names: neither is served the other's answers, and a purge in one leaves the
    other's entries."""

    def config_of(owner: str) -> Any:
        config = redis_config(simulator.url, redis.url)
        config["cachePolicies"]["default"]["stores"]["owner"] = owner
        return parse_config(config)

    q = f"What is my card limit? {uuid.uuid4().hex[:8]}"
    admin = {"authorization": "Bearer sk-local-admin"}
    with (
        TestClient(create_app(config_of("team-x"))) as x,
        TestClient(create_app(config_of("team-y"))) as y,
    ):
        ax = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=x)
        ay = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=y)
        assert ask(ax, q).headers["x-thrifty-cache"] == "miss"
        wait_cache_stores(x, 1)
        assert ask(ax, q).headers["x-thrifty-cache"] == "exact"
        assert ask(ay, q).headers["x-thrifty-cache"] == "miss"  # not team-x's answer
        wait_cache_stores(y, 1)
        purged = y.post("/v1/thrifty/cache/purge", json={"tenant": "team-a"}, headers=admin)
        assert purged.json()["exact"] == 1  # its own entry only
        assert ask(ax, q).headers["x-thrifty-cache"] == "exact"  # team-x's entry is still there
        ax.close()
        ay.close()


def test_gateways_sharing_one_policy_share_no_entries(
    simulator: Simulator, redis: RedisServer
) -> None:
    """Two LLMGateways in one namespace reference the same CachePolicy; each has its own tenant
    `team-a` (other keys, maybe another team): neither is served the other's answers, while
    the replicas of one gateway still share theirs; a purge through one gateway removes its
    own entries only."""

    def config_of(gateway: str) -> Any:
        config = redis_config(simulator.url, redis.url)
        config["cachePolicies"]["default"]["stores"]["owner"] = "shop"
        config["ledger"] = {"gateway": gateway}
        return parse_config(config)

    q = f"What is my card limit? {uuid.uuid4().hex[:8]}"
    with (
        TestClient(create_app(config_of("shop/gw-one"))) as one,
        TestClient(create_app(config_of("shop/gw-one"))) as one_again,
        TestClient(create_app(config_of("shop/gw-two"))) as two,
    ):
        clients = [
            openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=gw)
            for gw in (one, one_again, two)
        ]
        assert ask(clients[0], q).headers["x-thrifty-cache"] == "miss"
        wait_cache_stores(one, 1)
        assert ask(clients[1], q).headers["x-thrifty-cache"] == "exact"  # a replica of one
        assert ask(clients[2], q).headers["x-thrifty-cache"] == "miss"  # not gw-one's answer
        wait_cache_stores(two, 1)
        assert ask(clients[2], q).headers["x-thrifty-cache"] == "exact"
        admin = {"authorization": "Bearer sk-local-admin"}
        for stored, body in enumerate(({"tenant": "team-a"}, {}), start=2):
            purged = two.post("/v1/thrifty/cache/purge", json=body, headers=admin)
            assert purged.status_code == 200 and purged.json()["exact"] == 1  # gw-two's own
            assert ask(clients[2], q).headers["x-thrifty-cache"] == "miss"
            wait_cache_stores(two, stored)  # the miss stored gw-two's answer again
            assert ask(clients[0], q).headers["x-thrifty-cache"] == "exact"  # gw-one keeps it
        purged = one.post("/v1/thrifty/cache/purge", json={}, headers=admin)
        assert purged.json()["exact"] == 1
        assert ask(clients[1], q).headers["x-thrifty-cache"] == "miss"
        for client in clients:
            client.close()


def test_a_purge_on_one_gateway_reaches_the_embedded_index_of_another(
    simulator: Simulator, own_redis: RedisServer
) -> None:
    """Gateways that share a Redis exact store but keep their own embedded semantic index:
    a purge sent to one must also empty the other's index (through the purge log in Redis),
    or the other keeps serving the purged answer as a semantic hit, even for the identical
    question (the exact miss falls through to its semantic layer). Another tenant's entries
    stay."""
    config = parse_config(redis_config(simulator.url, own_redis.url, semantic=True))
    q = "What documents do I need to open a savings account?"  # (a Redis of its own)
    paraphrase = q.replace("What documents do I need", "Which documents do I need")
    kept = "What documents do I need to open a business account?"
    admin = {"authorization": "Bearer sk-local-admin"}
    with TestClient(create_app(config)) as one, TestClient(create_app(config)) as two:
        a2 = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=two)
        b2 = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-b", http_client=two)
        assert ask(a2, q).headers["x-thrifty-cache"] == "miss"
        assert ask(b2, kept).headers["x-thrifty-cache"] == "miss"
        wait_cache_stores(two, 2)
        assert ask(a2, paraphrase).headers["x-thrifty-cache"] == "semantic"
        kept_paraphrase = kept.replace("What documents", "Which documents")
        assert ask(b2, kept_paraphrase).headers["x-thrifty-cache"] == "semantic"
        purged = one.post("/v1/thrifty/cache/purge", json={"tenant": "team-a"}, headers=admin)
        assert purged.status_code == 200 and purged.json()["exact"] == 1
        assert purged.json()["semantic"] == 0  # (`one` holds none of them)
        # (the identical question: its exact entry is gone, and it must not come back from
        # the semantic layer; a miss stores a fresh answer)
        assert ask(a2, q).headers["x-thrifty-cache"] == "miss"
        b2_again = ask(b2, kept_paraphrase)
        assert b2_again.headers["x-thrifty-cache"] == "semantic"  # team-b's entry stays
        # An age purge applied late on the other gateway counts from when it ran: team-b's
        # entry was younger than 2 s then, and stays, though older by the time it applies.
        purged = one.post("/v1/thrifty/cache/purge", json={"older_than_seconds": 2}, headers=admin)
        assert purged.status_code == 200
        time.sleep(2.5)
        assert ask(b2, kept_paraphrase).headers["x-thrifty-cache"] == "semantic"
        for c in (a2, b2):
            c.close()


async def test_the_purge_log_gives_each_purge_since_a_fence_or_says_it_cannot(
    own_redis: RedisServer,
) -> None:
    """Each purge advances the fence and is logged under its new value, with its selector and
    time; the purges between two fences come back in order. A log that no longer holds them
    all (trimmed, deleted, or written by a gateway that kept none) says so: None, and the
    embedded index that follows it is dropped whole."""
    import redis as redis_lib

    from thrifty_gateway.services.cache.entry import Codec
    from thrifty_gateway.services.cache.exact import RedisExactStore
    from thrifty_gateway.services.cache.selector import Selector

    store = RedisExactStore(own_redis.url, "p:", Codec(False), 1 << 20, timeout=1.0)
    admin = redis_lib.Redis.from_url(own_redis.url)
    try:
        before = time.time()
        await store.purge(Selector(tenant="team-a", gateway="gw"))
        await store.purge(Selector(older_than_seconds=60.0, tag="faq"))
        assert await store.fence() == "2"
        purges = await store.purges_since("0", "2")
        assert purges is not None
        assert [s for s, _ in purges] == [
            Selector(tenant="team-a", gateway="gw"),
            Selector(older_than_seconds=60.0, tag="faq"),
        ]
        assert all(before <= at <= time.time() for _, at in purges)
        assert await store.purges_since("1", "2") == [purges[1]]
        assert await store.purges_since("2", "2") == []
        admin.delete("p:purge-log")
        assert await store.purges_since("0", "2") is None
    finally:
        await store.aclose()
        admin.close()


def test_a_restarted_redis_is_used_again_at_once(
    simulator: Simulator, own_redis: RedisServer, tmp_path: Path
) -> None:
    """Redis restarted (an upgrade, a failover to the same address): the connections pooled
    before it are dead. The first command on each is retried on a new connection, so the cache
    works at once: no lookup bypassed, no purge refused. (Without the retry the first lookup
    failed and cooled the cache down: 18 of the next 30 requests bypassed.)"""
    config = parse_config(redis_config(simulator.url, own_redis.url))
    prompts = [f"Question {i} {uuid.uuid4().hex[:6]}" for i in range(6)]
    with TestClient(create_app(config)) as http:
        client = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=http)
        for p in prompts[:3]:
            assert ask(client, p).headers["x-thrifty-cache"] == "miss"
        wait_cache_stores(http, 3)
        admin = {"authorization": "Bearer sk-local-admin"}
        purge = {"tenant": "team-b"}  # (team-a's entries stay)
        assert http.post("/v1/thrifty/cache/purge", json=purge, headers=admin).status_code == 200
        own_redis.stop()
        restarted = start_redis(tmp_path / "again", port=own_redis.port)
        try:
            answered = [ask(client, p).headers["x-thrifty-cache"] for p in prompts]
            assert answered == ["miss"] * 6  # (the restart emptied it; nothing bypassed)
            purged = http.post("/v1/thrifty/cache/purge", json=purge, headers=admin)
            assert purged.status_code == 200
        finally:
            restarted.kill()
        client.close()


def test_a_request_arriving_while_its_twin_is_upstream_waits_for_it(tmp_path: Path) -> None:
    """An identical request that arrives while the first is upstream follows it at once: it
    does not first run a semantic lookup, during which the first may land and leave, sending
    the second upstream too (the embedder is slowed here to make that window certain)."""
    from concurrent.futures import ThreadPoolExecutor

    slow: Simulator = start_simulator(tmp_path / "sim", "--latency-ms", "600")
    config = parse_config(
        {
            **local_config(slow.url),
            "cachePolicies": {
                "p": {
                    "spec": {
                        "semantic": {"enabled": True, "embedding": {}, "lookupTimeoutMs": 3000}
                    }
                }
            },
            "defaultCachePolicy": "p",
        }
    )
    try:
        with TestClient(create_app(config)) as gw:
            runtime = cache_stage_of(gw).policies["p"]
            embedder = runtime.embedder

            class Slow:
                def __getattr__(self, name: str) -> Any:
                    return getattr(embedder, name)

                def embed(self, texts: Any) -> Any:
                    time.sleep(0.8)
                    return embedder.embed(texts)

            runtime.embedder = Slow()
            a = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=gw)
            q = f"What is the daily ATM limit? {uuid.uuid4().hex[:6]}"
            with ThreadPoolExecutor(2) as pool:
                leader = pool.submit(ask, a, q)  # semantic lookup 0.8 s, then upstream 0.6 s
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and not slow.stats()["requests"]:
                    time.sleep(0.01)
                time.sleep(0.2)  # the leader is upstream, its flight registered
                follower = pool.submit(ask, a, q)
                heads = [leader.result().headers["x-thrifty-cache"]]
                heads.append(follower.result().headers["x-thrifty-cache"])
            assert heads == ["miss", "exact"]
            assert slow.stats()["requests"]["gpt-4o-mini"] == 1
            a.close()
    finally:
        slow.stop()


def test_a_replicas_embedded_index_never_serves_past_a_purge_it_cannot_see(
    simulator: Simulator, own_redis: RedisServer
) -> None:
    """Two gateways on one Redis, each with its own embedded semantic index. (a) The Redis
    loses its purge fence (a restart without persistence, an eviction): the next purge's fence
    is lower than the one the other gateway applied; it cannot tell which purges it missed and
    drops its index (it kept serving the purged answer). (b) Redis down: which purges ran is
    unknown, so the semantic layer is bypassed (it served from the index)."""
    import redis as redis_lib

    config = parse_config(redis_config(simulator.url, own_redis.url, semantic=True))
    q = "What documents do I need to open a savings account?"
    paraphrase = q.replace("What documents do I need", "Which documents do I need")
    admin = {"authorization": "Bearer sk-local-admin"}
    raw = redis_lib.Redis.from_url(own_redis.url)
    with TestClient(create_app(config)) as one, TestClient(create_app(config)) as two:
        a2 = openai.OpenAI(base_url="http://t/v1", api_key="sk-local-a", http_client=two)
        for _ in range(2):  # two purges of another tenant, applied by `two` at its lookups
            assert (
                one.post(
                    "/v1/thrifty/cache/purge", json={"tenant": "team-b"}, headers=admin
                ).status_code
                == 200
            )
            ask(a2, f"Warm up {uuid.uuid4().hex[:6]}")
        assert ask(a2, q).headers["x-thrifty-cache"] == "miss"
        wait_cache_stores(two, 3)
        assert ask(a2, paraphrase).headers["x-thrifty-cache"] == "semantic"
        (fence,) = raw.keys("thrifty:cache:*:purges")
        raw.delete(fence)  # lost: the next purge's fence is 1, below the 2 `two` applied
        assert (
            one.post(
                "/v1/thrifty/cache/purge", json={"tenant": "team-a"}, headers=admin
            ).status_code
            == 200
        )
        assert ask(a2, paraphrase).headers["x-thrifty-cache"] == "miss"
        wait_cache_stores(two, 4)
        assert ask(a2, paraphrase).headers["x-thrifty-cache"] == "exact"
        own_redis.kill()
        assert ask(a2, paraphrase).headers["x-thrifty-cache"] == "bypass"
        a2.close()
    raw.close()
