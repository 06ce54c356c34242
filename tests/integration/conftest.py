"""Integration fixtures: real services started per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import RedisServer, redis_server


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port for the whole session."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server
