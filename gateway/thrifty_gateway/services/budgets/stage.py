"""The budget stage: checks a request's tenant and route budgets before anything else runs.

* hard limit reached: 429 in OpenAI's shape (`type: insufficient_quota`,
  `code: budget_exceeded`) with `Retry-After` up to the end of the period;
* the rest of the budget held by the tenant's requests in flight (spend itself under the hard
  limit): 429 `rate_limit_error` / `budget_held` with a `Retry-After` of a few seconds (the
  holds are given back, or settled, as those requests end);
* soft limit reached: the request goes on, downgraded to the route's cheapest tier that can
  take it (`ctx.state[DOWNGRADE_KEY]`, read by the tiering stage), with an `x-thrifty-budget`
  header and the `thrifty_budget_limited` metric.

A request reserves an estimate of its cost on every budget it falls under as it is checked
(its prompt, estimated, plus `max_tokens` or `DEFAULT_COMPLETION_TOKENS`, at the dearest of its
targets' prices), in one atomic step with the check; a limit counts what requests in flight
hold. The after hook settles what the request really cost; a failed request gives its hold
back. Concurrent requests therefore overshoot a limit by at most one request's cost beyond its
estimate, not by what they all cost together.

When the store fails, spend that could not be written is kept and written again later, and
budgets are checked against this replica's copy of the spend (see book.py), with a warning in
the log and the `thrifty_budget_local_checks` and `thrifty_budget_store_errors` metrics. A
gateway without a shared Redis keeps spend in each replica's memory: every replica then
enforces the whole limit on its own (said at start).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from prometheus_client import Counter, Gauge

from thrifty_core.api.costcontrol import Budget
from thrifty_core.config import GatewayConfig
from thrifty_core.errors import NO_RETRY, RateLimitError, ServiceUnavailableError
from thrifty_core.prices import Usage

from ..pipeline import Outcome, RequestContext, StageResponse
from ..tiering.features import extract_features
from ..tiering.stage import DOWNGRADE_KEY
from .book import Reservation, SpendBook
from .periods import period_bounds, period_label
from .store import Check, MemorySpendStore, RedisSpendStore, SpendStore

log = logging.getLogger(__name__)

Scope = Literal["tenant", "route"]
BUDGET_HEADER = "x-thrifty-budget"
DEFAULT_COMPLETION_TOKENS = 512  # reserved for a request that names no max_tokens
_STATE_KEY = "budgets"
_PERIOD_WORD = {"day": "daily", "month": "monthly"}


HELD_RETRY_SECONDS = 2  # Retry-After when requests in flight hold the rest of a budget


def dollars(usd: float) -> str:
    """An amount as people read it: cents, or the digits that matter below a cent ($0.005
    read "$0.01" and $0.0004 "$0.00")."""
    if usd >= 10 or round(usd, 2) == round(usd, 6):
        return f"{usd:.2f}"
    return f"{usd:.6f}".rstrip("0")


class BudgetExceededError(RateLimitError):
    """A hard budget limit: 429 until the period ends."""

    type = "insufficient_quota"
    code = "budget_exceeded"

    @classmethod
    def for_line(
        cls, line: BudgetLine, spent: float, end: datetime, now: float, held: float = 0.0
    ) -> RateLimitError:
        """The error for `line` at its hard limit, retryable when its period ends; when its
        spend is under the limit and requests in flight hold the rest, `BudgetHeldError`."""
        b = line.budget
        limit = b.hard_limit_usd or 0.0
        word = _PERIOD_WORD[b.period]
        if spent < limit:
            return BudgetHeldError(
                f"The {line.scope} '{line.owner}' has ${dollars(limit - spent)} of its {word} "
                f"budget of ${dollars(limit)} left, held by its requests in flight "
                f"(${dollars(held)}). Retry in a few seconds.",
                retry_after=HELD_RETRY_SECONDS,
            )
        refused = cls(
            f"The {line.scope} '{line.owner}' has used its {word} budget of ${dollars(limit)} "
            f"(spent ${dollars(spent)}). It resets at {end.isoformat().replace('+00:00', 'Z')}.",
            retry_after=end.timestamp() - now,
        )
        refused.headers.update(NO_RETRY)  # (the SDKs would retry a 429 at once, twice)
        return refused


class BudgetHeldError(RateLimitError):
    """What is left of a budget is held by requests in flight: 429 for a few seconds."""

    code = "budget_held"


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
            "Requests downgraded (soft) or refused by a budget (hard: spent; held: the rest "
            "held by requests in flight).",
            ["scope", "owner", "kind"],
            registry=registry,
        )
        self.store_errors = Counter(
            "thrifty_budget_store_errors",
            "Budget store failures (spend kept for a retry, checks made against this "
            "replica's copy of the spend).",
            registry=registry,
        )
        self.local_checks = Counter(
            "thrifty_budget_local_checks",
            "Requests whose hard budget limits were checked against this replica's copy of "
            "the spend because the budget store was unavailable.",
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
        self.book = SpendBook(
            store,
            on_store_error=metrics.store_errors.inc,
            on_local_check=metrics.local_checks.inc,
        )
        self._clock = clock
        self._warned: set[str] = set()
        for ln in lines:
            b = ln.budget
            for kind, value in (("soft", b.soft_limit_usd), ("hard", b.hard_limit_usd)):
                if value is not None:
                    metrics.limit.labels(ln.scope, ln.owner, b.period, kind).set(value)

    def checks(self, lines: list[BudgetLine], now: float) -> list[Check]:
        """What the store checks per line in the period containing `now`."""
        return [
            Check(ln.window(now)[0], ln.legacy_key(now, self.named_since), ln.budget.hard_limit_usd)
            for ln in lines
        ]

    async def spent(
        self, lines: list[BudgetLine], now: float, *, fallback: bool = True
    ) -> list[float]:
        """Each line's spend in its period containing `now` (its pre-upgrade key's included, and
        spend this replica has not written yet), in one read. From this replica's copy when the
        store fails, unless not `fallback` (then the store's error)."""
        return await self.book.spent(self.checks(lines, now), fallback=fallback)

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
        ends = [end.timestamp() for _, _, end in windows]
        try:
            reading, held = await self.book.reserve(
                self.checks(lines, now), ends, estimate_usd(ctx)
            )
        except Exception:  # a bug, not the store (the book falls back on its own copy)
            log.exception("budget check failed; request let through")
            return None
        if held is not None:
            self._hold(ctx, held)
        soft: list[str] = []
        refused: RateLimitError | None = None
        for line, (key, _, end), usd, inflight in zip(
            lines, windows, reading.spent, reading.held, strict=True
        ):
            b = line.budget
            self.metrics.spend.labels(line.scope, line.owner, b.period).set(usd)
            if b.hard_limit_usd is not None and usd + inflight >= b.hard_limit_usd:
                error = BudgetExceededError.for_line(line, usd, end, now, inflight)
                held_only = isinstance(error, BudgetHeldError)
                kind = "held" if held_only else "hard"
                self.metrics.limited.labels(line.scope, line.owner, kind).inc()
                if not held_only:
                    self._warn(key, "hard", line)
                if refused is None or isinstance(refused, BudgetHeldError):
                    refused = error  # (a budget spent outranks one held)
                continue
            if b.soft_limit_usd is not None and usd >= b.soft_limit_usd:
                self.metrics.limited.labels(line.scope, line.owner, "soft").inc()
                self._warn(key, "soft", line)
                soft.append(f"{line.scope}={line.owner}")
        if refused is not None or not reading.admitted:
            i = next((i for i, ln in enumerate(lines) if ln.budget.hard_limit_usd is not None), 0)
            raise refused or BudgetExceededError.for_line(
                lines[i], reading.spent[i], windows[i][2], now, reading.held[i]
            )
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

    def _hold(self, ctx: RequestContext, held: Reservation) -> None:
        """Keep the reservation for the after hook; a request that fails (no after hook)
        gives it back when it is over."""
        ctx.state[_STATE_KEY] = held
        ctx.on_done.append(lambda: self.book.release(held))

    async def after_upstream(self, ctx: RequestContext, outcome: Outcome) -> None:
        held: Reservation | None = ctx.state.get(_STATE_KEY)
        if held is not None:
            await self.book.settle(held, outcome.cost_usd)

    async def status(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every budget (or one tenant's) with its spend in the current period."""
        lines = [
            ln for ln in self.lines if tenant is None or (ln.scope, ln.owner) == ("tenant", tenant)
        ]
        now = self._clock()
        windows = [ln.window(now) for ln in lines]
        try:
            spent = await self.spent(lines, now, fallback=False)
        except Exception as exc:
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
        await self.book.aclose()


def estimate_usd(ctx: RequestContext) -> float:
    """What a request may cost, reserved before it runs: its prompt (estimated as the tier
    rules do) plus `max_completion_tokens`/`max_tokens` (else `DEFAULT_COMPLETION_TOKENS`)
    per choice, at the dearest of its targets' prices."""
    body = ctx.body
    if ctx.endpoint == "chat":
        prompt = extract_features(body, ctx.headers).prompt_tokens
        asked = body.get("max_completion_tokens") or body.get("max_tokens")
        completion = DEFAULT_COMPLETION_TOKENS
        if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0:
            completion = asked
        n = body.get("n")
        if isinstance(n, int) and not isinstance(n, bool) and n > 1:
            completion *= n
    else:
        prompt, completion = len(orjson.dumps(body.get("input") or "")) // 4, 0
    usage = Usage(prompt_tokens=prompt, completion_tokens=completion)
    return max(
        (ctx.catalog.cost(t.model, usage, provider=t.provider) for t in ctx.targets),
        default=0.0,
    )


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
        log.warning(
            "budgets are kept in this replica's memory (the gateway has no shared Redis: no "
            "cache policy or batch queue): each replica enforces every limit on its own, so "
            "N replicas may spend up to N times a limit, and spend is forgotten on restart"
        )
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
