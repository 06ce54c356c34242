"""Direct mode: run lines against the route (retries, fallbacks) with bounded concurrency
under requests- and tokens-per-minute limits. Also used for retries when the policy says
`onFailure: direct`, and for providers without a Batch API."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson

from thrifty_core.api.batchqueue import DirectLimits
from thrifty_core.errors import ThriftyError, UpstreamStatusError
from thrifty_core.prices import PriceCatalog, Usage

from ...state import RouteRuntime
from ..cache.entry import CachedAnswer
from ..proxy import PATHS, estimate_usage
from ..ratelimit import TokenBucket
from ..resilience import Breakers, call_with_fallback
from ..sse import usage_of
from ..upstream import UpstreamClient
from .model import Line, Result

log = logging.getLogger(__name__)


class LineCache(Protocol):
    """Where lines first look for an answer and what their answers fill (the gateway's exact
    cache, when the route has a cache policy)."""

    async def get(self, line: Line) -> tuple[CachedAnswer | None, str | None]:
        """The cached answer (if any) and the purge fence read with it (None: unread)."""
        ...

    async def put(self, line: Line, answer: dict[str, Any]) -> None:
        """Fill the cache with a line's answer, unless a purge started since `line.fence`."""
        ...


class RateGate:
    """Waits until a request (and its estimated tokens) fits the per-minute limits."""

    def __init__(self, limits: DirectLimits) -> None:
        now = time.monotonic()
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        self._requests = TokenBucket(rpm, rpm, now) if rpm else None
        self._tokens = TokenBucket(tpm, tpm, now) if tpm else None
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                wait = 0.0
                if self._tokens is not None:
                    wait = self._tokens.wait_time(now)
                if wait == 0.0 and self._requests is not None:
                    wait = self._requests.take(1, now)
                if wait <= 0.0:
                    if self._tokens is not None:
                        self._tokens.debit(tokens, now)  # into debt: later calls wait
                    return
                await asyncio.sleep(min(wait, 5.0))

    def record(self, tokens: int) -> None:
        """Debit tokens known only after the call (the completion)."""
        if self._tokens is not None and tokens > 0:
            self._tokens.debit(tokens, time.monotonic())


def price(
    catalog: PriceCatalog,
    route: RouteRuntime,
    model: str,
    usage: Usage,
    *,
    batch: bool,
    provider: str | None = None,
) -> tuple[float, float]:
    """(cost, saved) of `usage` answered by `model` at `provider`, against the route's
    baseline list price (its first target's, at that target's provider)."""
    cost = catalog.cost(model, usage, batch=batch, provider=provider)
    first = route.config.targets[0]
    baseline = catalog.cost(first.model, usage, provider=first.provider)
    return cost, max(baseline - cost, 0.0)


def success(
    line: Line,
    body: dict[str, Any],
    catalog: PriceCatalog,
    route: RouteRuntime,
    model: str,
    *,
    batch: bool,
    primary: bool,
    status: int = 200,
    provider: str | None = None,
) -> Result:
    """A line answered by `model` at `provider`; `primary` when that was the route's primary
    target."""
    usage = usage_of(body) or estimate_usage(line.body, body)
    cost, saved = price(catalog, route, model, usage, batch=batch, provider=provider)
    return Result(
        line.custom_id,
        status,
        body,
        model=model,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cost_usd=cost,
        saved_usd=saved,
        primary=primary,
    )


def cached(line: Line, entry: CachedAnswer, catalog: PriceCatalog, route: RouteRuntime) -> Result:
    """A line answered from the cache: it cost nothing; the whole list price is saved (priced
    by the answer's usage, else the usage stored beside it, as the cache stage prices a hit;
    the stored figure is not added to the answer)."""
    body = entry.body
    usage = entry.worth() or estimate_usage(line.body, body)
    first = route.config.targets[0]
    _, saved = price(catalog, route, first.model, usage, batch=False, provider=first.provider)
    return Result(
        line.custom_id,
        200,
        body,
        model=route.config.targets[0].model,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        saved_usd=saved + catalog.cost(first.model, usage, provider=first.provider),
        lever="cache",
    )


class DirectExecutor:
    """One line at a time through the route's targets; returns (result, retryable)."""

    def __init__(
        self,
        upstream: UpstreamClient,
        routes: Mapping[str, RouteRuntime],
        catalog: PriceCatalog,
        limits: DirectLimits,
    ) -> None:
        self.upstream = upstream
        self.routes = routes
        self.catalog = catalog
        self.breakers = Breakers()
        self.gate = RateGate(limits)
        self.semaphore = asyncio.Semaphore(limits.concurrency)
        self.calls = 0

    async def run(
        self, line: Line, go: Callable[[], Awaitable[Result | None]] | None = None
    ) -> tuple[Result, bool]:
        """Run the line (when its turn comes, `go`, if given, may answer it instead: a batch
        cancelled while it waited)."""
        route = self.routes.get(line.route)
        if route is None:
            return Result(line.custom_id, None, None, "model_not_found", "unknown model"), False
        async with self.semaphore:
            await self.gate.acquire(estimate_usage(line.body, None).prompt_tokens)
            if go is not None and (instead := await go()) is not None:
                return instead, False
            self.calls += 1
            try:
                attempt = await call_with_fallback(
                    self.upstream,
                    self.breakers,
                    list(route.targets),
                    PATHS[line.endpoint],
                    lambda t: orjson.dumps({**line.body, "model": t.model}),
                    route.timeouts,
                    stream=False,
                    max_retries=route.config.max_retries,
                    retry_budget=route.config.retry_budget_seconds,
                )
            except UpstreamStatusError as exc:
                body = exc.body()
                return Result(line.custom_id, exc.status, body, exc.code, exc.message), False
            except ThriftyError as exc:
                return Result(line.custom_id, None, None, exc.code, exc.message), True
        try:
            body = orjson.loads(attempt.response.body)
        except orjson.JSONDecodeError:
            return Result(line.custom_id, None, None, "bad_response", "not JSON"), True
        primary = attempt.fallbacks == 0 and attempt.target == route.targets[0]
        result = success(
            line,
            body,
            self.catalog,
            route,
            attempt.target.model,
            batch=False,
            primary=primary,
            provider=attempt.target.provider,
        )
        self.gate.record(result.completion_tokens)
        return result, False
