"""A demotion by continuous evaluation is shared by the gateway's replicas through its ledger
Redis: another replica, and one started later (a rollout, a restart), keeps the demoted
version on the teacher; a new version serves again."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis import asyncio as aioredis

from tests.services import RedisServer
from thrifty_core.config import StudentConfig
from thrifty_gateway.services.distill.agreement import AgreementTracker
from thrifty_gateway.services.distill.demotions import DemotionStore
from thrifty_gateway.services.distill.metrics import DistillMetrics
from thrifty_gateway.services.distill.stage import DistillStage, StudentRoute

pytestmark = pytest.mark.integration


class Fixed:
    def __init__(self, version: str) -> None:
        self.version = version
        self.instructions: frozenset[str] = frozenset()

    async def predict(self, body: dict[str, Any]) -> None:
        del body

    async def aclose(self) -> None:
        return None


def replica(client: Any, gateway: str, version: str) -> tuple[DistillStage, StudentRoute]:
    cfg = StudentConfig(route="intent", name="intent", kind="classifier", mode="active")
    sr = StudentRoute(
        config=cfg,
        predictor=Fixed(version),
        capture=None,
        tracker=AgreementTracker(min_agreement=0.9),
    )
    stage = DistillStage(
        {"intent": sr},
        SimpleNamespace(),  # type: ignore[arg-type]
        DistillMetrics(CollectorRegistry()),
        demotions=DemotionStore(client, gateway),
    )
    return stage, sr


async def test_a_demotion_reaches_every_replica_and_outlives_a_restart(
    redis: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis.url)
    gateway = f"ns/gw-{os.urandom(3).hex()}"
    one, measured = replica(client, gateway, "v0001")
    two, other = replica(client, gateway, "v0001")
    one.demote(measured, "agreement 0.610 fell below 0.900")
    await asyncio.gather(*one.tasks)
    assert not other.demoted
    await two.sync_demotions()  # the reload loop's step
    assert other.demoted and "agreement 0.610" in other.demoted_reason
    restarted, again = replica(client, gateway, "v0001")
    await restarted.sync_demotions()  # at start
    assert again.demoted
    newer, fresh = replica(client, gateway, "v0002")  # a new version serves again
    await newer.sync_demotions()
    assert not fresh.demoted
    elsewhere, theirs = replica(client, "ns/other-gw", "v0001")  # another gateway's student
    await elsewhere.sync_demotions()
    assert not theirs.demoted
    await client.aclose()


async def test_without_redis_a_demotion_stays_on_its_replica() -> None:
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    one, measured = replica(dead, "ns/gw", "v0001")
    one.demote(measured, "agreement 0.5 fell below 0.9")  # the mark fails, logged
    await asyncio.gather(*one.tasks)
    assert measured.demoted
    two, other = replica(dead, "ns/gw", "v0001")
    await two.sync_demotions()
    assert not other.demoted
    await dead.aclose()
