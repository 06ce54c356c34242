"""Gateway lifecycle, without a network: provider keys that follow their Secret files, a batch
queue whose Redis is down at start, coalesced callers that always get an answer, the usage
summary off the event loop, and the shutdown timings of the server and of gateway pods."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import yaml

from tests.services import free_port
from thrifty_core.api import LLMGateway
from thrifty_core.config import GatewayConfig, ProviderConfig, parse_config, read_config_data
from thrifty_core.errors import ServiceUnavailableError, UpstreamError
from thrifty_core.prices import Usage
from thrifty_gateway import server
from thrifty_gateway.services import ledger as ledger_module
from thrifty_gateway.services.batching.coalesce import Coalescer
from thrifty_gateway.services.batching.main import FollowingBatches
from thrifty_gateway.services.batching.stage import (
    GATEWAY_SOCKET_TIMEOUT,
    RETRY_AFTER_SECONDS,
    batch_stage,
    open_queue,
)
from thrifty_gateway.services.ledger import Entry, Ledger
from thrifty_gateway.services.metrics import Metrics
from thrifty_gateway.services.pipeline import RequestContext, Target
from thrifty_gateway.services.upstream import ProviderKeys, Timeouts, UpstreamResponse
from thrifty_gateway.state import build_catalog, build_routes
from thrifty_operator.builders import gateway as gw
from thrifty_operator.builders.common import Owner
from thrifty_operator.builders.defaults import Defaults

ROOT = Path(__file__).resolve().parents[2]


def local(**overrides: Any) -> GatewayConfig:
    data: dict[str, Any] = read_config_data(ROOT / "examples" / "local.yaml")
    data.pop("cachePolicies", None)
    data.pop("defaultCachePolicy", None)
    data.update(overrides)
    return parse_config(data)


def provider(key_file: Path) -> ProviderConfig:
    return ProviderConfig.model_validate(
        {"name": "sim", "baseUrl": "http://127.0.0.1:9/v1", "apiKey": {"file": str(key_file)}}
    )


# -- provider keys -------------------------------------------------------------------------


def test_provider_keys_follow_their_file_and_keep_the_last_good_one(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("sk-old\n")
    keys = ProviderKeys([provider(key_file)])
    assert keys.values == {"sim": "sk-old"} and keys.version == 0
    assert keys.reload() == {}

    key_file.write_text("sk-new\n")  # the kubelet swapped the Secret's file
    assert keys.reload() == {"sim": "sk-new"}
    assert keys.values["sim"] == "sk-new" and keys.version == 1

    key_file.write_text("")  # mid-swap or emptied: the previous key stays
    assert keys.reload() == {} and keys.values["sim"] == "sk-new"
    key_file.unlink()
    assert keys.reload() == {} and keys.values["sim"] == "sk-new"
    assert keys.version == 1


def test_a_provider_key_that_cannot_be_read_at_start_fails_the_start(tmp_path: Path) -> None:
    with pytest.raises(LookupError):
        ProviderKeys([provider(tmp_path / "missing")])


async def test_the_batch_worker_clients_follow_a_rotated_key(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("sk-old")
    keys = ProviderKeys([provider(key_file)])
    batches = FollowingBatches([provider(key_file)], keys)
    try:
        first = batches._client()
        assert batches._client() is first
        key_file.write_text("sk-new")
        keys.reload()
        second = batches._client()
        assert second is not first
        assert second._clients["sim"].api_key == "sk-new"
        assert first._clients["sim"].api_key == "sk-old"  # closed at the end, not mid-call
    finally:
        await batches.aclose()


# -- batch queue Redis down ----------------------------------------------------------------


def batch_config(tmp_path: Path) -> GatewayConfig:
    closed = free_port()  # nothing listens there
    return local(
        batch={
            "name": "down",
            "redisUrl": f"redis://127.0.0.1:{closed}/0",
            "filesDir": str(tmp_path / "files"),
        }
    )


def test_the_gateway_queue_client_has_short_timeouts(tmp_path: Path) -> None:
    config = batch_config(tmp_path)
    queue = open_queue(config, gateway=True)
    assert queue is not None
    kwargs = queue.redis.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == GATEWAY_SOCKET_TIMEOUT
    assert kwargs["socket_connect_timeout"] <= 1.0
    asyncio.run(queue.aclose())


async def test_a_batch_stage_starts_without_its_redis_and_refuses_deferral_with_503(
    tmp_path: Path,
) -> None:
    config = batch_config(tmp_path)
    routes = build_routes(config)
    resources = SimpleNamespace(
        upstream=None,
        catalog=build_catalog(config),
        ledger=Ledger(Metrics()),
        routes=routes,
        stages=[],
    )
    stage = await batch_stage(config, resources)  # Redis is down: no error at start
    assert stage is not None
    try:
        route = routes["gpt-4o"]
        ctx = RequestContext(
            "r1",
            "chat",
            route.config,
            config.tenants[0],
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
            {},
            list(route.targets),
            build_catalog(config),
            defer=True,
        )
        with pytest.raises(ServiceUnavailableError) as info:
            await stage.before_upstream(ctx)
        assert info.value.status == 503
        assert info.value.code == "batch_queue_unavailable"
        assert info.value.headers == {"retry-after": str(RETRY_AFTER_SECONDS)}
    finally:
        await stage.aclose()


# -- coalesced embeddings ------------------------------------------------------------------


class Answers:
    """An upstream answering every embeddings call with `body(n)` for n inputs."""

    def __init__(self, usage: Any) -> None:
        self.usage = usage

    async def send(
        self, target: Target, path: str, payload: bytes, timeouts: Timeouts, stream: bool
    ) -> UpstreamResponse:
        del target, path, timeouts, stream
        n = len(orjson.loads(payload)["input"])
        data = [{"object": "embedding", "index": i, "embedding": [0.1]} for i in range(n)]
        return UpstreamResponse(200, {}, body=orjson.dumps({"data": data, "usage": self.usage}))

    async def aclose(self) -> None:
        return None


async def embed(coalescer: Coalescer, config: GatewayConfig) -> Any:
    route = build_routes(config)["text-embedding-3-small"]
    ctx = RequestContext(
        "r1",
        "embeddings",
        route.config,
        config.tenants[0],
        {"model": route.config.name, "input": "hello"},
        {},
        list(route.targets),
        build_catalog(config),
    )
    return await asyncio.wait_for(coalescer.embed(ctx, route), 5)


async def test_a_malformed_usage_field_answers_the_caller() -> None:
    config = local()
    coalescer = Coalescer(Answers("n/a"), build_catalog(config), window_ms=5)
    answer = await embed(coalescer, config)  # the estimate stands in for the provider's count
    assert answer is not None and answer.usage == Usage(prompt_tokens=1)
    await coalescer.aclose()


async def test_any_failure_of_a_coalesced_call_fails_its_callers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = local()
    coalescer = Coalescer(Answers({}), build_catalog(config), window_ms=5)

    async def broken(group: Any, inputs: Any) -> Any:
        del group, inputs
        raise RuntimeError("a bug")

    monkeypatch.setattr(coalescer, "_request", broken)
    with pytest.raises(UpstreamError, match="RuntimeError"):
        await embed(coalescer, config)
    await coalescer.aclose()


# -- usage summary -------------------------------------------------------------------------


async def test_the_usage_summary_is_computed_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[int] = []
    summarise = ledger_module.summarise

    def spy(*args: Any) -> dict[str, Any]:
        threads.append(threading.get_ident())
        return summarise(*args)

    monkeypatch.setattr(ledger_module, "summarise", spy)
    ledger = Ledger(Metrics())
    ledger.record(Entry("team-a", "gpt-4o", "gpt-4o", Usage(10, 5), 0.01, {"cache": 0.02}))
    body = await ledger.usage(bucket="hour")
    assert body["totals"]["requests"] == 1 and body["source"] == "memory"
    assert threads and threads[0] != threading.get_ident()


# -- shutdown ------------------------------------------------------------------------------


def test_uvicorn_lets_requests_run_for_their_longest_route_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data: dict[str, Any] = read_config_data(ROOT / "examples" / "local.yaml")
    assert server.graceful_shutdown_seconds(parse_config(data)) == 60  # gpt-4o's 60 s
    data["routes"][0]["timeoutSeconds"] = 299.5
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    seen: dict[str, Any] = {}
    monkeypatch.setattr("uvicorn.run", lambda _app, **kwargs: seen.update(kwargs))
    monkeypatch.setenv(server.CONFIG_ENV, "restored-after-the-test")
    monkeypatch.setattr(server, "setup_logging", lambda _level, _format: None)
    server.serve(path)
    assert seen["timeout_graceful_shutdown"] == 300


def test_gateway_pods_drain_before_stopping_and_get_time_for_their_routes() -> None:
    body: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "llmgateway.yaml").read_text())
    body["metadata"].update(namespace="shop", uid="uid-gw", generation=1)
    body["spec"]["routes"][1]["timeoutSeconds"] = 120
    gateway = LLMGateway.model_validate(body)
    deploy = gw.build_deployment(
        gateway, Owner.from_body(body), "h", gw.GatewayMounts(), Defaults()
    )
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # The kubelet's own sleep (no shell in the image needed) while endpoints drop the pod.
    assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    # preStop 5 + the longest route (120) + the ledger drain 5 + closing 10.
    assert pod["terminationGracePeriodSeconds"] == 140
    for route in body["spec"]["routes"]:
        route["timeoutSeconds"] = 1
    short = LLMGateway.model_validate(body)
    assert gw.termination_grace_seconds(short) == 5 + gw.GRACEFUL_MIN_SECONDS + 5 + 10
