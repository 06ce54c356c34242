"""The budget stage: checks a request's tenant and route budgets before anything else runs.

* hard limit reached: 429 in OpenAI's shape (`type: insufficient_quota`,
  `code: budget_exceeded`) with `Retry-After` up to the end of the period;
* soft limit reached: the request goes on, downgraded to the route's cheapest tier
  (`ctx.state[DOWNGRADE_KEY]`, read by the tiering stage), with an `x-thrifty-budget` header
  and the `thrifty_budget_limited` metric.

The after hook adds what the request cost to every budget it falls under. Spend is checked
before and added after a request, so concurrent requests can overshoot a limit by what they
cost together. When the store fails the stage lets traffic through (fail open) and says so in
the log and the `thrifty_budget_store_errors` metric.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from prometheus_client import Counter, Gauge

from thrifty_core.api.costcontrol import Budget
from thrifty_core.config import GatewayConfig
from thrifty_core.errors import RateLimitError, ServiceUnavailableError

from ..pipeline import Outcome, RequestContext, StageResponse
from ..tiering.stage import DOWNGRADE_KEY
from .periods import period_bounds, period_label
from .store import MemorySpendStore, RedisSpendStore, SpendStore, SpendStoreUnavailable

log = logging.getLogger(__name__)

Scope = Literal["tenant", "route"]
BUDGET_HEADER = "x-thrifty-budget"
_STATE_KEY = "budgets"


class BudgetExceededError(RateLimitError):
    """A hard budget limit: 429 until the period ends."""

    type = "insufficient_quota"
    code = "budget_exceeded"

    @classmethod
    def for_line(
        cls, line: BudgetLine, spent: float, end: datetime, now: float
    ) -> BudgetExceededError:
        """The error for `line` at its hard limit, retryable when its period ends."""
        b = line.budget
        return cls(
            f"The {line.scope} '{line.owner}' has used its {b.period}ly budget of "
            f"${b.hard_limit_usd:.2f} (spent ${spent:.2f}). It resets at "
            f"{end.isoformat().replace('+00:00', 'Z')}.",
            retry_after=end.timestamp() - now,
        )


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One budget: whose (tenant or route), its limits, and the gateway it belongs to
    (`namespace/name`; '' for a gateway run without the operator)."""

    scope: Scope
    owner: str
    budget: Budget
    gateway: str = ""

    def _key(self, gateway: str, label: str) -> str:
        whose = f"{gateway}:" if gateway else ""  # a gateway holds no ':' (Kubernetes names)
        return f"thrifty:budget:{whose}{self.scope}:{self.owner}:{self.budget.period}:{label}"

    def window(self, now: float) -> tuple[str, datetime, datetime]:
        """(store key, period start, period end) of the period containing `now`."""
        start, end = period_bounds(self.budget.period, now)
        return self._key(self.gateway, period_label(self.budget.period, start)), start, end

    def legacy_key(self, now: float, named_since: float | None) -> str | None:
        """The key of the same period before keys named their gateway, when that period began
        by `named_since` (the gateway's first start with named keys): its spend still counts
        until the period ends, so an upgrade does not hand a tenant a fresh budget. (It may
        hold another gateway's tenant of the same name too: counting it in that one period errs
        on the side of the limit.) None for later periods, or when this line names no gateway,
        or without `named_since`."""
        if not self.gateway or named_since is None:
            return None
        start, _ = period_bounds(self.budget.period, now)
        if start.timestamp() > named_since:
            return None
        return self._key("", period_label(self.budget.period, start))


class BudgetMetrics:
    def __init__(self, registry: Any) -> None:
        self.spend = Gauge(
            "thrifty_budget_spend_usd",
            "Money spent in the current budget period (as last seen by this replica).",
            ["scope", "owner", "period"],
            registry=registry,
        )
        self.limit = Gauge(
            "thrifty_budget_limit_usd",
            "Budget limits.",
            ["scope", "owner", "period", "kind"],
            registry=registry,
        )
        self.limited = Counter(
            "thrifty_budget_limited",
            "Requests downgraded (soft) or refused (hard) by a budget.",
            ["scope", "owner", "kind"],
            registry=registry,
        )
        self.store_errors = Counter(
            "thrifty_budget_store_errors",
            "Budget store failures (requests were let through).",
            registry=registry,
        )


class BudgetStage:
    """See the module docstring."""

    name = "budgets"

    def __init__(
        self,
        lines: list[BudgetLine],
        store: SpendStore,
        metrics: BudgetMetrics,
        clock: Callable[[], float] = time.time,
        named_since: float | None = None,
    ) -> None:
        self.lines = lines
        self.named_since = named_since  # see `BudgetLine.legacy_key`
        self._tenants = {ln.owner: ln for ln in lines if ln.scope == "tenant"}
        self._routes = {ln.owner: ln for ln in lines if ln.scope == "route"}
        self.store = store
        self.metrics = metrics
        self._clock = clock
        self._warned: set[str] = set()
        for ln in lines:
            b = ln.budget
            for kind, value in (("soft", b.soft_limit_usd), ("hard", b.hard_limit_usd)):
                if value is not None:
                    metrics.limit.labels(ln.scope, ln.owner, b.period, kind).set(value)

    async def spent(self, lines: list[BudgetLine], now: float) -> list[float]:
        """Each line's spend in its period containing `now` (its pre-upgrade key's included),
        in one read. Raises when the store fails."""
        keys = [ln.window(now)[0] for ln in lines]
        legacy = [
            (i, k)
            for i, ln in enumerate(lines)
            if (k := ln.legacy_key(now, self.named_since)) is not None
        ]
        values = await self.store.get(keys + [k for _, k in legacy])
        out = values[: len(lines)]
        for (i, _), usd in zip(legacy, values[len(lines) :], strict=True):
            out[i] += usd
        return out

    def lines_for(self, tenant: str | None, route: str) -> list[BudgetLine]:
        found = [self._tenants[tenant]] if tenant in self._tenants else []
        if route in self._routes:
            found.append(self._routes[route])
        return found

    async def before_upstream(self, ctx: RequestContext) -> StageResponse | None:
        lines = self.lines_for(ctx.tenant.name if ctx.tenant else None, ctx.route.name)
        if not lines:
            return None
        now = self._clock()
        windows = [ln.window(now) for ln in lines]
        ctx.state[_STATE_KEY] = [(key, end.timestamp()) for key, _, end in windows]
        try:
            spent = await self.spent(lines, now)
        except Exception as exc:  # the store logs an outage once
            self.metrics.store_errors.inc()
            log.debug("budget store unavailable; request let through: %s", type(exc).__name__)
            return None
        soft: list[str] = []
        for line, (key, _, end), usd in zip(lines, windows, spent, strict=True):
            b = line.budget
            self.metrics.spend.labels(line.scope, line.owner, b.period).set(usd)
            if b.hard_limit_usd is not None and usd >= b.hard_limit_usd:
                self.metrics.limited.labels(line.scope, line.owner, "hard").inc()
                self._warn(key, "hard", line)
                raise BudgetExceededError.for_line(line, usd, end, now)
            if b.soft_limit_usd is not None and usd >= b.soft_limit_usd:
                self.metrics.limited.labels(line.scope, line.owner, "soft").inc()
                self._warn(key, "soft", line)
                soft.append(f"{line.scope}={line.owner}")
        if soft:
            ctx.state[DOWNGRADE_KEY] = True
            ctx.response_headers[BUDGET_HEADER] = "soft-limit; " + ",".join(soft)
        return None

    def _warn(self, key: str, kind: str, line: BudgetLine) -> None:
        """Log the first time a budget passes a limit in a period (per replica)."""
        marker = f"{key}:{kind}"
        if marker in self._warned:
            return
        if len(self._warned) > 10_000:
            self._warned.clear()
        self._warned.add(marker)
        log.warning(
            "budget %s limit reached",
            kind,
            extra={"scope": line.scope, line.scope: line.owner, "period": line.budget.period},
        )

    async def after_upstream(self, ctx: RequestContext, outcome: Outcome) -> None:
        items: list[tuple[str, float]] | None = ctx.state.get(_STATE_KEY)
        if not items or outcome.cost_usd <= 0:
            return
        try:
            await self.store.add(items, outcome.cost_usd)
        except Exception as exc:  # the store logs an outage once
            self.metrics.store_errors.inc()
            log.debug("budget store unavailable; spend not recorded: %s", type(exc).__name__)

    async def status(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every budget (or one tenant's) with its spend in the current period."""
        lines = [
            ln for ln in self.lines if tenant is None or (ln.scope, ln.owner) == ("tenant", tenant)
        ]
        now = self._clock()
        windows = [ln.window(now) for ln in lines]
        try:
            spent = await self.spent(lines, now)
        except SpendStoreUnavailable as exc:
            raise ServiceUnavailableError(
                "Budget spend cannot be read right now (its store is unavailable); retry.",
                code="budget_store_unavailable",
            ) from exc
        out = []
        for line, (_, start, end), usd in zip(lines, windows, spent, strict=True):
            b = line.budget
            state = "ok"
            if b.hard_limit_usd is not None and usd >= b.hard_limit_usd:
                state = "hard"
            elif b.soft_limit_usd is not None and usd >= b.soft_limit_usd:
                state = "soft"
            out.append(
                {
                    "scope": line.scope,
                    "owner": line.owner,
                    "period": b.period,
                    "period_start": start.isoformat().replace("+00:00", "Z"),
                    "period_end": end.isoformat().replace("+00:00", "Z"),
                    "spent_usd": round(usd, 8),
                    "soft_limit_usd": b.soft_limit_usd,
                    "hard_limit_usd": b.hard_limit_usd,
                    "state": state,
                }
            )
        return out

    async def aclose(self) -> None:
        await self.store.aclose()


def budget_lines(config: GatewayConfig) -> list[BudgetLine]:
    gw = config.ledger.gateway
    lines = [BudgetLine("tenant", t.name, t.budget, gw) for t in config.tenants if t.budget]
    lines += [BudgetLine("route", r.name, r.budget, gw) for r in config.routes if r.budget]
    return lines


async def budget_stage(config: GatewayConfig, resources: Any) -> BudgetStage | None:
    """The stage when a tenant or route declares a budget (spend in the ledger's Redis when
    configured, else in memory)."""
    lines = budget_lines(config)
    if not lines:
        return None
    url = config.ledger.redis_url
    secret = config.ledger.redis_password
    gateway = config.ledger.gateway
    if not url:
        return BudgetStage(lines, MemorySpendStore(), BudgetMetrics(resources.metrics.registry))
    store = RedisSpendStore.from_url(
        url, password=secret.read_store_credential() if secret else None
    )
    named_since: float | None = None
    if gateway:
        try:
            named_since = await store.keys_named_since(gateway)
        except Exception as exc:
            # Unknown: the spend of before counts in the current periods only.
            named_since = time.time()
            log.warning("budget store unavailable at start: %s", type(exc).__name__)
    return BudgetStage(
        lines, store, BudgetMetrics(resources.metrics.registry), named_since=named_since
    )
