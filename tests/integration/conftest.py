"""Integration fixtures: real services started per session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.procs import (
    Gateway,
    Simulator,
    local_config,
    start_gateway,
    start_simulator,
)
from tests.services import RedisServer, redis_server

FAULT_MODELS = ("storm-model=429", "broken-model=500", "slow-model=timeout")


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port for the whole session."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    """The provider simulator as a separate process. Models `storm-model` (always 429),
    `broken-model` (always 500) and `slow-model` (hangs) inject faults; Retry-After is 0.05s
    so retry tests stay fast."""
    args: list[str] = ["--retry-after", "0.05", "--hang-seconds", "5"]
    for fault in FAULT_MODELS:
        args += ["--fault", fault]
    sim = start_simulator(tmp_path_factory.mktemp("simulator"), *args)
    try:
        yield sim
    finally:
        sim.stop()


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def gateway_factory(simulator: Simulator, tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start gateways (separate processes) from examples/local.yaml plus overrides, pointed at
    the session simulator; all are stopped at the end of the test."""
    started: list[Gateway] = []

    def factory(env: dict[str, str] | None = None, **overrides: Any) -> Gateway:
        gw = start_gateway(tmp_path, local_config(simulator.url, **overrides), env)
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(gateway_factory: GatewayFactory) -> Gateway:
    """A gateway on examples/local.yaml (pointed at the simulator)."""
    return gateway_factory()
