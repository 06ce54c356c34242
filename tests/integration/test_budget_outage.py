"""Budgets on a real redis-server: replicas reserve atomically (concurrent requests do not all
pass a limit), holds are given back, and a stalled Redis neither switches hard limits off nor
loses the spend written meanwhile."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from redis import asyncio as aioredis

from tests.services import RedisServer, start_redis
from tests.unit.test_budget_units import ctx
from thrifty_core.api.costcontrol import Budget
from thrifty_core.prices import Usage
from thrifty_gateway.services.budgets.stage import (
    BudgetExceededError,
    BudgetHeldError,
    BudgetLine,
    BudgetMetrics,
    BudgetStage,
)
from thrifty_gateway.services.budgets.store import FAILURES, RedisSpendStore
from thrifty_gateway.services.pipeline import Outcome, RequestContext

pytestmark = pytest.mark.integration


def replica(url: str, gateway: str, hard: float = 0.01) -> BudgetStage:
    line = BudgetLine("tenant", "team-a", Budget(period="day", hard_limit_usd=hard), gateway)
    store = RedisSpendStore(aioredis.Redis.from_url(url))
    return BudgetStage([line], store, BudgetMetrics(CollectorRegistry()))


def cost(usd: float) -> Outcome:
    return Outcome(200, {}, Usage(1000, 500), "gpt-4o", "p/gpt-4o", usd)


async def test_replicas_reserve_atomically_and_give_holds_back(redis: RedisServer) -> None:
    """40 requests at once through two replicas against a $0.01 limit, each holding ~$0.005:
    two get in (it was all 40 before holds), and once settled nothing stays held."""
    gateway = f"ns/gw-{os.urandom(4).hex()}"
    one, two = replica(redis.url, gateway), replica(redis.url, gateway)

    async def attempt(stage: BudgetStage) -> RequestContext | BaseException:
        c = ctx()
        try:
            await stage.before_upstream(c)
        except BudgetHeldError as exc:  # (nothing spent yet: held by the two in flight)
            return exc
        return c

    results = await asyncio.gather(*(attempt(s) for _ in range(20) for s in (one, two)))
    admitted = [r for r in results if isinstance(r, RequestContext)]
    assert len(admitted) == 2
    assert all(isinstance(r, BudgetHeldError) for r in results if r not in admitted)
    key = one.lines[0].window(time.time())[0]
    check = aioredis.Redis.from_url(redis.url)
    assert len(await check.hgetall(f"{key}:held")) == 2  # one field per request in flight
    assert await check.ttl(f"{key}:held") > 0  # holds may be evicted; spend never
    for c in admitted:
        await (one if c is admitted[0] else two).after_upstream(c, cost(0.0075))
    assert float(await check.get(key) or 0) == pytest.approx(0.015)
    assert await check.hgetall(f"{key}:held") == {}  # every hold given back
    assert await check.ttl(key) == -1
    with pytest.raises(BudgetExceededError):
        await one.before_upstream(ctx())
    await check.aclose()
    await one.aclose()
    await two.aclose()


async def test_a_redis_stall_keeps_hard_limits_and_the_spend(tmp_path: Path) -> None:
    """Redis stops answering: a tenant over its limit stays refused (checked against the
    replica's copy, with a warning), a tenant under it goes on, and what it spent during the
    stall is written once Redis answers again."""
    own = start_redis(tmp_path / "redis")
    over = replica(own.url, "ns/over")
    under = replica(own.url, "ns/under", hard=100)
    try:
        c = ctx()
        await over.before_upstream(c)
        await over.after_upstream(c, cost(0.02))
        c = ctx()
        await under.before_upstream(c)
        own.proc.send_signal(signal.SIGSTOP)
        for _ in range(FAILURES + 5):  # timeouts, then the breaker is open: refused all along
            with pytest.raises(BudgetExceededError):
                await over.before_upstream(ctx())
        assert over.metrics.local_checks._value.get() == FAILURES + 5
        await under.after_upstream(c, cost(0.5))  # refused by the stalled Redis: kept
        assert under.book.unwritten == pytest.approx(0.5)
        assert await under.before_upstream(ctx()) is None
        own.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(2.2)  # the write breaker's cooldown
        assert await under.book.flush()
        check = aioredis.Redis.from_url(own.url)
        key = under.lines[0].window(time.time())[0]
        assert float(await check.get(key) or 0) == pytest.approx(0.5)
        await check.aclose()
    finally:
        own.proc.send_signal(signal.SIGCONT)
        await over.aclose()
        await under.aclose()
        own.kill()


async def test_holds_count_while_their_slot_is_recent_and_are_dropped_after(
    redis: RedisServer,
) -> None:
    """A hold left by a replica that died mid-request counts for HOLD_SLOTS minutes, then the
    next reserve deletes it (a field's slot is the number it starts with)."""
    from thrifty_gateway.services.budgets.store import HOLD_SLOTS, hold_slot

    gateway = f"ns/gw-{os.urandom(4).hex()}"
    stage = replica(redis.url, gateway, hard=1.0)
    key = stage.lines[0].window(time.time())[0]
    check = aioredis.Redis.from_url(redis.url)
    now = hold_slot(time.time())
    recent, old = f"{now}:a1", f"{now - HOLD_SLOTS - 1}:b2"
    await check.hset(f"{key}:held", mapping={recent: "0.25", old: "9"})
    reading, _ = await stage.book.reserve(stage.checks(stage.lines, time.time()), [0.0], 0.0)
    assert reading.held == [pytest.approx(0.25)]
    assert await check.hkeys(f"{key}:held") == [recent.encode()]  # the old one is gone
    await check.aclose()
    await stage.aclose()


async def test_batch_lines_are_charged_once_however_they_are_regrouped(
    redis: RedisServer,
) -> None:
    """A charge whose write timed out after Redis applied it comes back with the next reclaim,
    grouped with other lines: each line adds its spend once."""
    store = RedisSpendStore(aioredis.Redis.from_url(redis.url))
    key = f"thrifty:budget:ns/gw-{os.urandom(4).hex()}/thrifty:tenant:team-a:day:x"
    items = [(key, time.time() + 3600)]
    bucket = f"ns/gw|thrifty:batch:q:ledger:{os.urandom(3).hex()}"
    await store.charge_lines(items, [("1-0", 0.25), ("2-0", 0.5)], bucket)
    regrouped = [("1-0", 0.25), ("2-0", 0.5), ("3-0", 1.0)]
    await store.charge_lines(items, regrouped, bucket)
    check = aioredis.Redis.from_url(redis.url)
    assert float(await check.get(key) or 0) == pytest.approx(1.75)
    assert 0 < await check.ttl(f"thrifty:budget:charged:{bucket}") <= 3 * 3600
    assert await check.ttl(key) == -1
    await check.aclose()
    await store.aclose()
