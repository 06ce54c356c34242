"""Tenant rate limits shared by every gateway replica, in Redis (the ledger's `redisUrl`).

Without it each replica enforces the whole limit on its own, so three replicas (or an HPA that
scales out) let a tenant through at three times its `requestsPerMinute`. Here each tenant's two
buckets are Redis hashes (`thrifty:rl:<namespace>/<gateway>:<tenant>:req` / `:tok`, fields
level and time; a gateway run without the operator names none: `thrifty:rl:<tenant>:req`)
changed only by Lua scripts, which check and take in one atomic round trip and refill from
Redis's own clock, so replicas' clocks never matter. Buckets carry no TTL (two small keys per
tenant): the Redis they share with the cache evicts keys that have one (`volatile-lru`), and an
evicted bucket would hand a tenant a fresh minute. Token usage is debited after the answer,
from the request's finish task, off the response path.

Why scripts and not a library: `limits` and its kin offer fixed or moving windows that are
checked and consumed by the same amount up front, while token limits here must be debited
after the call with the actual usage (a bucket may go into debt), the same rule `LocalLimiter`
applies.

When Redis fails or answers slower than `timeout`, the check and the debit fall back to this
replica's own buckets (`LocalLimiter`, per-replica limits, as without Redis) for a short
cool-down, the failure is counted in `thrifty_ratelimit_shared_errors_total` and logged once
per outage: a Redis outage never fails or slows requests.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter

from thrifty_core.config import TenantConfig

from .ratelimit import LocalLimiter, refusal
from .redis_client import fast_redis
from .resilience import BreakerOpen, CircuitBreaker, call_guarded

log = logging.getLogger(__name__)

PREFIX = "thrifty:rl:"

# Shared by both scripts: the level of bucket `key` (rate `rate` per minute, burst one minute's
# worth) refilled up to now; an absent bucket is full.
_LEVEL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level(key, rate)
  local v = redis.call('HMGET', key, 'l', 't')
  local l, ts = tonumber(v[1]), tonumber(v[2])
  if l == nil or ts == nil then return rate end
  return math.min(rate, l + math.max(0, now - ts) * rate / 60)
end
local function store(key, rate, l)
  redis.call('HSET', key, 'l', tostring(l), 't', tostring(now))
  redis.call('PERSIST', key)
end
"""

# KEYS: request bucket, token bucket; ARGV: requests/min, tokens/min (0 = no limit).
# Returns {0, "0"} when taken, else {1 (requests) | 2 (tokens), seconds to wait}.
CHECK = (
    _LEVEL
    + """
local req_rate, tok_rate = tonumber(ARGV[1]), tonumber(ARGV[2])
if tok_rate > 0 then
  local l = level(KEYS[2], tok_rate)
  if l <= 0 then return {2, tostring((1 - l) * 60 / tok_rate)} end
end
if req_rate > 0 then
  local l = level(KEYS[1], req_rate)
  if l < 1 then return {1, tostring((1 - l) * 60 / req_rate)} end
  store(KEYS[1], req_rate, l - 1)
end
return {0, '0'}
"""
)

# KEYS: token bucket; ARGV: tokens/min, tokens used (may put the bucket into debt).
DEBIT = (
    _LEVEL
    + """
local rate = tonumber(ARGV[1])
store(KEYS[1], rate, level(KEYS[1], rate) - tonumber(ARGV[2]))
return 0
"""
)

_REFUSED = {1: "requests", 2: "tokens"}  # the CHECK script's first answer


def limit_keys(gateway: str, tenant: str) -> tuple[str, str]:
    """A tenant's request and token buckets. Per gateway (`namespace/name`, no ':'), so that
    two gateways on one Redis never limit each other's tenants of the same name; '' (a gateway
    run without the operator) keeps the keys of before. A window is short: nothing to migrate."""
    prefix = f"{PREFIX}{gateway}:" if gateway else PREFIX
    return f"{prefix}{tenant}:req", f"{prefix}{tenant}:tok"


class SharedLimiter:
    """The `Limiter` of a gateway with a shared Redis: one budget for all replicas."""

    def __init__(
        self,
        client: Any,
        registry: Any,
        *,
        timeout: float = 0.1,
        cooldown: float = 2.0,
        fallback: LocalLimiter | None = None,
        gateway: str = "",
    ) -> None:
        self.client = client
        self._gateway = gateway
        self._check = client.register_script(CHECK)
        self._debit = client.register_script(DEBIT)
        self._timeout = timeout
        self._breaker = CircuitBreaker(threshold=1, cooldown=cooldown)
        self.fallback = fallback or LocalLimiter()
        self.errors = Counter(
            "thrifty_ratelimit_shared_errors",
            "Shared rate-limit (Redis) calls that failed or timed out; this replica's own "
            "buckets decided instead.",
            ["op"],
            registry=registry,
        )

    @classmethod
    def from_url(
        cls, url: str, registry: Any, *, password: str | None = None, gateway: str = ""
    ) -> SharedLimiter:
        client = fast_redis(url, password=password, timeout=0.1)
        return cls(client, registry, gateway=gateway)

    def keys(self, tenant: str) -> tuple[str, str]:
        return limit_keys(self._gateway, tenant)

    async def _run(self, op: str, script: Any, keys: list[str], args: list[int]) -> Any:
        """The script's answer, or None when Redis is cooling down, failed or was slow."""
        was_up = self._breaker.opened_at is None
        try:
            result = await call_guarded(self._breaker, script(keys=keys, args=args), self._timeout)
        except BreakerOpen:
            return None
        except Exception as exc:  # connection refused, timeouts, script errors
            self.errors.labels(op).inc()
            if was_up:
                log.warning(
                    "shared rate limits unavailable; limiting per replica: %s",
                    type(exc).__name__,
                )
            return None
        if not was_up:
            log.info("shared rate limits reachable again")
        return result

    async def check(self, tenant: TenantConfig) -> None:
        """Raise RateLimitError (429 + Retry-After) when the tenant is over a limit."""
        if not (tenant.requests_per_minute or tenant.tokens_per_minute):
            return
        args = [tenant.requests_per_minute or 0, tenant.tokens_per_minute or 0]
        result = await self._run("check", self._check, list(self.keys(tenant.name)), args)
        if result is None:
            await self.fallback.check(tenant)
            return
        which, wait = int(result[0]), float(result[1])
        if which:
            raise refusal(_REFUSED[which], wait)

    async def record_tokens(self, tenant: TenantConfig, tokens: int) -> None:
        if not (tenant.tokens_per_minute and tokens):
            return
        key = self.keys(tenant.name)[1]
        done = await self._run("debit", self._debit, [key], [tenant.tokens_per_minute, tokens])
        if done is None:
            await self.fallback.record_tokens(tenant, tokens)

    async def aclose(self) -> None:
        await self.client.aclose()
