"""Budgets under load and outages: reservations bound concurrent overshoot, a store outage
checks against this replica's copy of the spend (never lets everything through), spend the
store refused is kept and written later, and the 429 says its period in words."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from thrifty_core.api.costcontrol import Budget
from thrifty_core.config import parse_config
from thrifty_core.errors import ServiceUnavailableError
from thrifty_core.prices import Usage
from thrifty_gateway.services.budgets.stage import (
    BudgetExceededError,
    BudgetHeldError,
    BudgetLine,
    BudgetMetrics,
    BudgetStage,
    budget_stage,
    estimate_usd,
)
from thrifty_gateway.services.budgets.store import (
    Check,
    MemorySpendStore,
    Reading,
    SpendStoreUnavailable,
)
from thrifty_gateway.services.pipeline import Outcome, RequestContext
from thrifty_gateway.services.tiering.stage import DOWNGRADE_KEY

from .test_budget_units import NOW, ctx

DAY = Budget(period="day", hard_limit_usd=0.01)


class Flaky(MemorySpendStore):
    """The memory store, failing every call while `down` (a Redis outage or stall)."""

    def __init__(self) -> None:
        super().__init__(lambda: NOW)
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise SpendStoreUnavailable("get")

    async def get(self, keys: Sequence[str]) -> list[float]:
        self._check()
        return await super().get(keys)

    async def add(self, items: Sequence[tuple[str, float]], usd: float) -> None:
        self._check()
        await super().add(items, usd)

    async def reserve(self, checks: Sequence[Check], usd: float, hold: str) -> Reading:
        self._check()
        return await super().reserve(checks, usd, hold)

    async def settle(
        self,
        items: Sequence[tuple[str, float]],
        usd: float,
        hold: str | None,
        once: str | None = None,
    ) -> None:
        self._check()
        await super().settle(items, usd, hold, once)


class LateReserve(MemorySpendStore):
    """A reserve that times out after the store ran it (a slow Redis, event-loop lag)."""

    def __init__(self) -> None:
        super().__init__(lambda: NOW)
        self.late = False

    async def reserve(self, checks: Sequence[Check], usd: float, hold: str) -> Reading:
        reading = await super().reserve(checks, usd, hold)
        if self.late:
            raise TimeoutError
        return reading


def stage(store: MemorySpendStore, budget: Budget = DAY) -> BudgetStage:
    line = BudgetLine("tenant", "team-a", budget)
    return BudgetStage([line], store, BudgetMetrics(CollectorRegistry()), lambda: NOW)


def cost(usd: float) -> Outcome:
    return Outcome(200, {}, Usage(1000, 500), "gpt-4o", "p/gpt-4o", usd)


@pytest.mark.parametrize(("period", "word"), [("day", "daily"), ("month", "monthly")])
async def test_the_refusal_names_its_period_in_words(period: str, word: str) -> None:
    s = stage(MemorySpendStore(lambda: NOW), Budget(period=period, hard_limit_usd=0.01))
    first = ctx()
    await s.before_upstream(first)
    await s.after_upstream(first, cost(0.02))
    with pytest.raises(BudgetExceededError) as refused:
        await s.before_upstream(ctx())
    assert f"has used its {word} budget of $0.01 (spent $0.02)" in refused.value.message


async def test_a_budget_partly_spent_and_partly_held_and_the_soft_limit() -> None:
    """Spent under the hard limit, the rest held: `budget_held`; the soft limit counts what is
    spent (holds are estimates of requests that may cost far less: they downgraded requests
    for nothing); spent past the hard limit with holds too: `budget_exceeded`."""
    budget = Budget(period="day", soft_limit_usd=0.006, hard_limit_usd=0.02)
    s = stage(MemorySpendStore(lambda: NOW), budget)
    first = ctx()
    await s.before_upstream(first)
    await s.after_upstream(first, cost(0.004))
    in_flight = [ctx() for _ in range(4)]  # each holds $0.00512
    for c in in_flight:
        assert await s.before_upstream(c) is None
        assert DOWNGRADE_KEY not in c.state  # (the second saw $0.00912 spent or held)
    with pytest.raises(BudgetHeldError) as held:
        await s.before_upstream(ctx())
    assert "has $0.016 of its daily budget of $0.02 left" in held.value.message
    for c in in_flight:
        await s.after_upstream(c, cost(0.003))
    downgraded = ctx()
    assert await s.before_upstream(downgraded) is None  # $0.016 spent
    assert downgraded.state[DOWNGRADE_KEY] is True
    await s.after_upstream(downgraded, cost(0.006))
    with pytest.raises(BudgetExceededError) as spent:
        await s.before_upstream(ctx())
    assert "has used its daily budget of $0.02 (spent $0.022)" in spent.value.message


def test_amounts_are_written_as_people_read_them() -> None:
    from thrifty_gateway.services.budgets.stage import dollars

    cases = {
        0.005: "0.005", 0.0051: "0.0051", 0.00048: "0.00048", 0.01: "0.01", 0.5: "0.50",
        2.0000004: "2.00", 1e-7: "0.00", 9.9999999: "10.00", 12.345: "12.35", 0.0: "0.00",
    }  # fmt: skip
    assert {usd: dollars(usd) for usd in cases} == cases


async def test_concurrent_requests_reserve_before_they_run() -> None:
    """50 requests at once against a $0.01 limit: each holds its estimate (no prompt, 512
    completion tokens of gpt-4o: ~$0.005) as it is checked, so two get in, not fifty."""
    s = stage(MemorySpendStore(lambda: NOW))
    assert estimate_usd(ctx()) == pytest.approx(512 * 10.0 / 1e6)

    async def one() -> RequestContext:
        c = ctx()
        await s.before_upstream(c)
        return c

    results = await asyncio.gather(*(one() for _ in range(50)), return_exceptions=True)
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetHeldError)]
    assert (len(admitted), len(refused)) == (2, 48)
    # nothing is spent yet: refused for a moment (the holds go when those requests end), not
    # told the budget is used and to come back when the period ends
    body = refused[0].body()["error"]
    assert (body["type"], body["code"]) == ("rate_limit_error", "budget_held")
    assert refused[0].headers["retry-after"] == "2"
    assert "$0.01 left, held by its requests in flight ($0.01024)" in refused[0].message
    for c in admitted:
        await s.after_upstream(c, cost(0.0075))
    [status] = await s.status()
    assert status["spent_usd"] == pytest.approx(0.015)  # overshoot: one request, not 49


async def test_a_failed_request_gives_its_hold_back() -> None:
    s = stage(MemorySpendStore(lambda: NOW))
    held = [ctx(), ctx()]
    for c in held:
        await s.before_upstream(c)
    with pytest.raises(BudgetHeldError):
        await s.before_upstream(ctx())
    for c in held:
        c.done()  # failed: no after hook ran
    await asyncio.sleep(0)
    await asyncio.gather(*s.book._tasks)
    assert await s.before_upstream(ctx()) is None
    [status] = await s.status()
    assert status["spent_usd"] == 0.0


async def test_a_store_outage_checks_against_this_replicas_copy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store fails: a tenant over its limit stays refused, one under it goes on until its
    own spend since the last read reaches the limit; the spend of the outage is kept and
    written when the store is back, never lost."""
    store = Flaky()
    over = stage(store)
    c = ctx()
    await over.before_upstream(c)
    await over.after_upstream(c, cost(0.012))
    store.down = True
    with caplog.at_level(logging.WARNING), pytest.raises(BudgetExceededError):
        await over.before_upstream(ctx())
    assert "enforced from this replica's copy" in caplog.text
    assert over.metrics.local_checks._value.get() == 1

    store = Flaky()
    under = stage(store)
    c = ctx()
    await under.before_upstream(c)
    await under.after_upstream(c, cost(0.004))  # read and written while the store is up
    store.down = True
    c = ctx()
    await under.before_upstream(c)  # 0.004 seen < 0.01: admitted from the copy
    await under.after_upstream(c, cost(0.007))  # refused by the store: kept
    assert under.book.unwritten == pytest.approx(0.007)
    with pytest.raises(BudgetExceededError):
        await under.before_upstream(ctx())  # 0.004 + 0.007 kept: at the limit
    with pytest.raises(ServiceUnavailableError):
        await under.status()  # the admin view says the store is down, not stale figures
    store.down = False
    assert await under.book.flush()
    assert await store.get([under.lines[0].window(NOW)[0]]) == [pytest.approx(0.011)]
    assert under.book.unwritten == 0
    with pytest.raises(BudgetExceededError):
        await under.before_upstream(ctx())


async def test_holds_taken_while_the_store_was_down_are_not_spend() -> None:
    """Two requests held $0.01 in this replica's copy while the store was down; once it is
    back, the next is refused for a moment (`budget_held`), not told the budget is used
    until the period ends (the copy's holds were counted as spent)."""
    store = Flaky()
    s = stage(store)
    store.down = True
    in_flight = [ctx(), ctx()]
    for c in in_flight:
        assert await s.before_upstream(c) is None  # held here: 0.00512 each
    store.down = False
    with pytest.raises(BudgetHeldError):
        await s.before_upstream(ctx())


async def test_kept_spend_is_retried_in_the_background() -> None:
    store = Flaky()
    s = stage(store, Budget(period="day", hard_limit_usd=100))
    c = ctx()
    await s.before_upstream(c)
    store.down = True
    await s.after_upstream(c, cost(0.5))
    store.down = False
    task = s.book._drain
    assert task is not None
    await asyncio.wait_for(task, 5)
    assert await store.get([s.lines[0].window(NOW)[0]]) == [0.5]


async def test_budgets_without_a_shared_redis_warn_that_they_are_per_replica(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = parse_config(
        {
            "providers": [{"name": "p", "baseUrl": "http://x/v1"}],
            "routes": [{"name": "r", "targets": [{"provider": "p", "model": "gpt-4o"}]}],
            "tenants": [{"name": "t", "apiKeyHashes": ["0" * 64], "budget": {"hardLimitUsd": 5}}],
        }
    )
    resources = SimpleNamespace(metrics=SimpleNamespace(registry=CollectorRegistry()))
    with caplog.at_level(logging.WARNING):
        found = await budget_stage(config, resources)
    assert found is not None
    assert "each replica enforces every limit on its own" in caplog.text


async def test_a_long_outage_keeps_memory_bounded_and_the_spend_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from thrifty_gateway.services.budgets import book

    monkeypatch.setattr(book, "MAX_KEPT", 3)
    store = Flaky()
    s = stage(store, Budget(period="day", hard_limit_usd=100))
    store.down = True
    for _ in range(10):
        c = ctx()
        await s.before_upstream(c)
        await s.after_upstream(c, cost(0.1))
    assert len(s.book._kept) == 4  # three one by one, the rest merged
    assert s.book.unwritten == pytest.approx(1.0)
    store.down = False
    assert await s.book.flush()
    assert await store.get([s.lines[0].window(NOW)[0]]) == [pytest.approx(1.0)]


async def test_a_reserve_that_timed_out_after_the_store_took_it_is_given_back() -> None:
    """The hold landed in the store but the reserve timed out: the request runs on this
    replica's copy, and settling deletes the hold it may have left (its own field), so no
    phantom hold is counted by every replica for minutes."""
    store = LateReserve()
    s = stage(store, Budget(period="day", hard_limit_usd=1.0))
    store.late = True
    c = ctx()
    await s.before_upstream(c)  # admitted from the local copy
    store.late = False
    checks = s.checks(s.lines_for("team-a", "gpt-4o"), NOW)
    reading, _ = await s.book.reserve(checks, [NOW], 0.0)  # (holds nothing: a reading)
    assert reading.held[0] > 0  # the store holds the timed-out reservation's estimate
    await s.after_upstream(c, cost(0.0))
    await asyncio.sleep(0)
    reading, _ = await s.book.reserve(checks, [NOW], 0.0)
    assert reading.held == [0.0]  # given back
