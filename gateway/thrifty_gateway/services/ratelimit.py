"""Per-tenant request and token rate limits (token buckets).

Requests are taken from a bucket of `requestsPerMinute` before the call; tokens are debited
after the answer with the actual usage, so a tenant whose token bucket is in debt is refused
until it refills. Refusals carry the seconds until the bucket allows the next request.
`LocalLimiter` keeps the buckets in this process (the embedded default, where each replica
enforces the whole limit on its own); a gateway with a shared Redis uses
`ratelimit_shared.SharedLimiter`, which applies the same rules across replicas.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from thrifty_core.config import TenantConfig
from thrifty_core.errors import RateLimitError


@dataclass(slots=True)
class TokenBucket:
    """`rate_per_min` units per minute, burst up to one minute's worth."""

    rate_per_min: float
    level: float
    updated: float

    def _refill(self, now: float) -> None:
        cap = self.rate_per_min
        self.level = min(cap, self.level + (now - self.updated) * cap / 60)
        self.updated = now

    def take(self, amount: float, now: float) -> float:
        """Take `amount` if available: 0.0; else the seconds until it would be."""
        self._refill(now)
        if self.level >= amount:
            self.level -= amount
            return 0.0
        return (amount - self.level) * 60 / self.rate_per_min

    def debit(self, amount: float, now: float) -> None:
        """Take `amount` even into debt (actual usage known after the call)."""
        self._refill(now)
        self.level -= amount

    def wait_time(self, now: float) -> float:
        """Seconds until the level is positive again (0 if it is)."""
        self._refill(now)
        return 0.0 if self.level > 0 else (1 - self.level) * 60 / self.rate_per_min


def refusal(limit: str, wait: float) -> RateLimitError:
    """429 for a tenant over `limit` ("requests" or "tokens"), retry after `wait` seconds."""
    noun = "request" if limit == "requests" else "token"
    return RateLimitError(
        f"Tenant {noun} rate limit exceeded.", retry_after=wait, code=f"{limit}_per_minute"
    )


class Limiter(Protocol):
    async def check(self, tenant: TenantConfig) -> None: ...

    async def record_tokens(self, tenant: TenantConfig, tokens: int) -> None: ...

    async def aclose(self) -> None: ...


class LocalLimiter:
    """In-process buckets per tenant."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, TokenBucket] = {}
        self._tokens: dict[str, TokenBucket] = {}

    def _bucket(self, store: dict[str, TokenBucket], name: str, rate: int) -> TokenBucket:
        bucket = store.get(name)
        if bucket is None or bucket.rate_per_min != rate:
            bucket = TokenBucket(rate, rate, self._clock())
            store[name] = bucket
        return bucket

    async def check(self, tenant: TenantConfig) -> None:
        """Raise RateLimitError (429 + Retry-After) when the tenant is over a limit."""
        now = self._clock()
        if tenant.tokens_per_minute:
            bucket = self._bucket(self._tokens, tenant.name, tenant.tokens_per_minute)
            wait = bucket.wait_time(now)
            if wait > 0:
                raise refusal("tokens", wait)
        if tenant.requests_per_minute:
            bucket = self._bucket(self._requests, tenant.name, tenant.requests_per_minute)
            wait = bucket.take(1, now)
            if wait > 0:
                raise refusal("requests", wait)

    async def record_tokens(self, tenant: TenantConfig, tokens: int) -> None:
        if tenant.tokens_per_minute and tokens:
            bucket = self._bucket(self._tokens, tenant.name, tenant.tokens_per_minute)
            bucket.debit(tokens, self._clock())

    async def aclose(self) -> None:
        return None
