"""Cost control on the hot path: what the tier rule engine, the budget check (memory and a
real redis-server) and the prefix watch add per request. JSON on stdout via `python -m bench
costcontrol`."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from tests.services import redis_server

from thrifty_core.api.costcontrol import Budget, Hygiene, PrefixWatch, Tiering
from thrifty_core.config import RouteConfig, TenantConfig
from thrifty_core.prices import PriceCatalog, Usage
from thrifty_gateway.services.budgets.stage import BudgetLine, BudgetMetrics, BudgetStage
from thrifty_gateway.services.budgets.store import MemorySpendStore, RedisSpendStore, SpendStore
from thrifty_gateway.services.hygiene.stage import HygieneMetrics, HygieneStage
from thrifty_gateway.services.pipeline import Outcome, RequestContext, Target
from thrifty_gateway.services.tiering.features import extract_features
from thrifty_gateway.services.tiering.rules import choose_tier

ROUTE = RouteConfig.model_validate({"name": "chat", "targets": [{"provider": "p", "model": "m"}]})
TENANT = TenantConfig(name="team-a", api_key_hashes=["0" * 64])
TIERING = Tiering.model_validate(
    {
        "tiers": [
            {
                "name": "nano",
                "targets": [{"provider": "p", "model": "n"}],
                "rules": [
                    {"maxPromptTokens": 50, "hasTools": False, "keywordsNone": ["prove"]},
                    {"metadata": {"tier": "cheap"}},
                ],
            },
            {
                "name": "mini",
                "targets": [{"provider": "p", "model": "m"}],
                "rules": [{"maxPromptTokens": 800, "hasImages": False}],
            },
        ]
    }
)
BODY: dict[str, Any] = {
    "model": "chat",
    "messages": [
        {"role": "system", "content": "You are a helpful support assistant. " * 30},
        {"role": "user", "content": "Where is my parcel? It was due yesterday."},
    ],
}


def ctx() -> RequestContext:
    return RequestContext(
        request_id="r",
        endpoint="chat",
        route=ROUTE,
        tenant=TENANT,
        body=dict(BODY),
        headers={},
        targets=[Target("p", "m")],
        catalog=PriceCatalog(),
    )


def per_call_us(fn: Callable[[], object], n: int) -> dict[str, float]:
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - start) / n * 1e6)
    return {"median_us": round(statistics.median(samples), 2), "min_us": round(min(samples), 2)}


async def per_call_async_us(fn: Callable[[], Awaitable[object]], n: int) -> dict[str, float]:
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            await fn()
        samples.append((time.perf_counter() - start) / n * 1e6)
    return {"median_us": round(statistics.median(samples), 2), "min_us": round(min(samples), 2)}


async def budget_round_trip(store: SpendStore, n: int) -> dict[str, float]:
    """before_upstream (check and reserve: tenant + route) on the latency path, and the whole
    round with after_upstream (settle the cost, give the hold back). Every request settles, as
    in the gateway: holds left unsettled would pile up in the holds hash and slow the check."""
    lines = [
        BudgetLine("tenant", "team-a", Budget(period="day", soft_limit_usd=1e6)),
        BudgetLine("route", "chat", Budget(period="month", hard_limit_usd=1e6)),
    ]
    stage = BudgetStage(lines, store, BudgetMetrics(CollectorRegistry()))
    outcome = Outcome(200, {}, Usage(100, 50), "m", "p/m", 0.0001)
    checks: list[float] = []
    rounds: list[float] = []
    for _ in range(5):
        check = both = 0.0
        for _ in range(n):
            c = ctx()
            start = time.perf_counter()
            await stage.before_upstream(c)
            checked = time.perf_counter()
            await stage.after_upstream(c, outcome)
            done = time.perf_counter()
            check += checked - start
            both += done - start
        checks.append(check / n * 1e6)
        rounds.append(both / n * 1e6)
    return {
        "check_us (on the latency path)": round(statistics.median(checks), 2),
        "check_and_add_us": round(statistics.median(rounds), 2),
    }


def main() -> dict[str, Any]:
    result: dict[str, Any] = {}
    result["tier_decision"] = per_call_us(
        lambda: choose_tier(TIERING, extract_features(BODY, {"x-thrifty-tags": "a=b"})), 5000
    )
    hygiene = HygieneStage(
        {
            "chat": Hygiene(
                default_stop=["\n\nUser:"], prefix_watch=PrefixWatch(min_prefix_tokens=64)
            )
        },
        HygieneMetrics(CollectorRegistry()),
    )
    result["hygiene_before_upstream"] = asyncio.run(
        per_call_async_us(lambda: hygiene.before_upstream(ctx()), 5000)
    )
    result["budget_check_and_add_memory"] = asyncio.run(budget_round_trip(MemorySpendStore(), 5000))
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as server:

        async def on_redis() -> dict[str, float]:
            store = RedisSpendStore.from_url(server.url)
            try:
                return await budget_round_trip(store, 1000)
            finally:
                await store.aclose()

        result["budget_check_and_add_redis"] = asyncio.run(on_redis())
    result["note"] = (
        "per request, one process, loopback redis-server; budget check = one Lua reserve "
        "(spend + holds, then the hold), settle = one Lua script after the response"
    )
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
