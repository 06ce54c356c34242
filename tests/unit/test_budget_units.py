"""Budgets: periods, the in-memory spend store and the stage's soft/hard decisions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from thrifty_core.api.costcontrol import Budget
from thrifty_core.config import RouteConfig, TenantConfig
from thrifty_core.prices import PriceCatalog, Usage
from thrifty_gateway.services.budgets.periods import period_bounds, period_label, seconds_left
from thrifty_gateway.services.budgets.stage import (
    BUDGET_HEADER,
    BudgetExceededError,
    BudgetLine,
    BudgetMetrics,
    BudgetStage,
)
from thrifty_gateway.services.budgets.store import MemorySpendStore
from thrifty_gateway.services.pipeline import Outcome, RequestContext, Target
from thrifty_gateway.services.tiering.stage import DOWNGRADE_KEY

NOW = datetime(2026, 11, 27, 15, 30, tzinfo=UTC).timestamp()


def test_day_and_month_periods() -> None:
    start, end = period_bounds("day", NOW)
    assert (start.isoformat(), end.isoformat()) == (
        "2026-11-27T00:00:00+00:00",
        "2026-11-28T00:00:00+00:00",
    )
    assert period_label("day", start) == "2026-11-27"
    start, end = period_bounds("month", NOW)
    assert (start.day, end.month, period_label("month", start)) == (1, 12, "2026-11")
    dec = datetime(2026, 12, 31, 23, tzinfo=UTC).timestamp()
    assert period_bounds("month", dec)[1] == datetime(2027, 1, 1, tzinfo=UTC)
    assert seconds_left("day", NOW) == 8.5 * 3600


async def test_memory_store_adds_and_expires() -> None:
    clock = [NOW]
    store = MemorySpendStore(lambda: clock[0])
    await store.add([("a", NOW + 10), ("b", NOW + 10)], 1.5)
    await store.add([("a", NOW + 10)], 0.25)
    assert await store.get(["a", "b", "c"]) == [1.75, 1.5, 0.0]
    clock[0] = NOW + 10 + 86400 + 1  # a day past the period end
    assert await store.get(["a"]) == [0.0]


ROUTE = RouteConfig.model_validate(
    {"name": "chat", "targets": [{"provider": "p", "model": "gpt-4o"}]}
)
TENANT = TenantConfig(name="team-a", api_key_hashes=["0" * 64])


def ctx() -> RequestContext:
    return RequestContext(
        request_id="r",
        endpoint="chat",
        route=ROUTE,
        tenant=TENANT,
        body={"model": "chat", "messages": []},
        headers={},
        targets=[Target("p", "gpt-4o")],
        catalog=PriceCatalog(),
    )


def stage(store: MemorySpendStore, *lines: BudgetLine) -> BudgetStage:
    return BudgetStage(list(lines), store, BudgetMetrics(CollectorRegistry()), lambda: NOW)


def outcome(cost: float) -> Outcome:
    return Outcome(200, {}, Usage(10, 10), "gpt-4o", "p/gpt-4o", cost)


async def test_soft_then_hard_limit() -> None:
    store = MemorySpendStore(lambda: NOW)
    budget = Budget(period="day", soft_limit_usd=1.0, hard_limit_usd=2.0)
    s = stage(store, BudgetLine("tenant", "team-a", budget))

    first = ctx()
    assert await s.before_upstream(first) is None
    assert DOWNGRADE_KEY not in first.state
    await s.after_upstream(first, outcome(1.2))

    second = ctx()
    assert await s.before_upstream(second) is None
    assert second.state[DOWNGRADE_KEY] is True
    assert second.response_headers[BUDGET_HEADER] == "soft-limit; tenant=team-a"
    await s.after_upstream(second, outcome(0.9))

    with pytest.raises(BudgetExceededError) as refused:
        await s.before_upstream(ctx())
    err = refused.value
    assert err.status == 429
    assert err.body()["error"]["type"] == "insufficient_quota"
    assert err.body()["error"]["code"] == "budget_exceeded"
    assert err.headers["retry-after"] == str(int(8.5 * 3600))
    assert "2026-11-28T00:00:00Z" in err.message
    status = await s.status()
    assert status[0]["state"] == "hard"
    assert status[0]["spent_usd"] == pytest.approx(2.1)


async def test_route_budget_applies_to_every_tenant_and_tenants_see_only_theirs() -> None:
    store = MemorySpendStore(lambda: NOW)
    s = stage(
        store,
        BudgetLine("route", "chat", Budget(period="month", hard_limit_usd=0.5)),
        BudgetLine("tenant", "team-b", Budget(period="month", hard_limit_usd=100)),
    )
    c = ctx()
    await s.before_upstream(c)
    await s.after_upstream(c, outcome(0.6))
    with pytest.raises(BudgetExceededError, match="route 'chat'"):
        await s.before_upstream(ctx())
    assert [b["owner"] for b in await s.status("team-b")] == ["team-b"]
    assert len(await s.status()) == 2


async def test_requests_outside_every_budget_pass_untouched() -> None:
    store = MemorySpendStore(lambda: NOW)
    s = stage(store, BudgetLine("tenant", "someone-else", Budget(hard_limit_usd=0)))
    c = ctx()
    assert await s.before_upstream(c) is None
    assert c.state == {} and c.response_headers == {}


def test_soft_limit_above_hard_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="softLimitUsd"):
        Budget(soft_limit_usd=5, hard_limit_usd=1)


async def test_gateways_on_one_store_keep_their_tenants_spend_apart() -> None:
    """Two gateways (namespace/name) on one spend store, each with a tenant 'team-a': spend
    through one never counts against the other's budget."""
    store = MemorySpendStore(lambda: NOW)
    budget = Budget(period="day", hard_limit_usd=1.0)
    one = stage(store, BudgetLine("tenant", "team-a", budget, "ns-one/gw"))
    two = stage(store, BudgetLine("tenant", "team-a", budget, "ns-two/gw"))
    c = ctx()
    await one.before_upstream(c)
    await one.after_upstream(c, outcome(1.5))
    with pytest.raises(BudgetExceededError):
        await one.before_upstream(ctx())
    assert await two.before_upstream(ctx()) is None
    assert [b["spent_usd"] for b in await two.status()] == [0.0]
    (key, _, _) = one.lines[0].window(NOW)
    assert key.startswith("thrifty:budget:ns-one/gw:tenant:team-a:day:")


async def test_spend_under_the_keys_of_before_counts_until_its_period_ends() -> None:
    """An upgrade moves a gateway's budgets under keys that name it: what was spent earlier in
    the period still counts (no fresh budget), new spend goes under the new key, and from the
    next period on the keys of before (which a gateway run without the operator may still
    write) count no more."""
    now = [NOW]
    store = MemorySpendStore(lambda: now[0])
    budget = Budget(period="day", hard_limit_usd=1.0)
    before = BudgetLine("tenant", "team-a", budget)
    (old_key, _, end) = before.window(NOW)
    await store.add([(old_key, end.timestamp())], 0.75)
    line = BudgetLine("tenant", "team-a", budget, "ns/gw")
    after = BudgetStage([line], store, BudgetMetrics(CollectorRegistry()), lambda: now[0], NOW)
    assert line.legacy_key(NOW, NOW) == old_key
    c = ctx()
    assert await after.before_upstream(c) is None
    await after.after_upstream(c, outcome(0.5))
    assert await store.get([old_key]) == [0.75]  # left as it was
    with pytest.raises(BudgetExceededError):
        await after.before_upstream(ctx())
    assert [b["spent_usd"] for b in await after.status()] == [1.25]
    assert before.legacy_key(NOW, NOW) is None  # a gateway that names none reads one key
    assert line.legacy_key(NOW, None) is None  # no upgrade moment known: none either
    # The next day: 0.9 spent under the key of before (by a gateway that names none) no longer
    # counts here.
    now[0] = end.timestamp() + 60
    (next_old, _, next_end) = before.window(now[0])
    await store.add([(next_old, next_end.timestamp())], 0.9)
    assert line.legacy_key(now[0], NOW) is None
    assert await after.before_upstream(ctx()) is None
    assert [b["spent_usd"] for b in await after.status()] == [0.0]
