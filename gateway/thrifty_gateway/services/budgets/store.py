"""Where budget spend lives: `SpendStore` with Redis (shared, durable across gateway restarts)
and in-memory (one process, embedded mode) implementations.

Keys name the gateway, the scope, the owner and the period
(`thrifty:budget:team-ns/thrifty:tenant:team-a:day:2026-11-27`; a gateway run without the
operator names no gateway: `thrifty:budget:tenant:team-a:...`) and are kept until a day after
their period ends. In Redis they carry no TTL (the Redis they share with the cache evicts keys
that have one, `volatile-lru`, and spend must never be forgotten under memory pressure): the
sorted set `thrifty:budget:expiry` lists them by that time, and writers delete those past it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..redis_expiry import drop_listed
from ..resilience import BreakerOpen, CircuitBreaker, call_guarded

EXPIRY_GRACE_SECONDS = 86400
log = logging.getLogger(__name__)


class SpendStore(Protocol):
    async def get(self, keys: Sequence[str]) -> list[float]:
        """Money spent so far under each key (0 when unknown)."""
        ...

    async def add(self, items: Sequence[tuple[str, float]], usd: float) -> None:
        """Add `usd` to every key; each item is (key, epoch second its period ends)."""
        ...

    async def aclose(self) -> None: ...


class MemorySpendStore:
    """Spend in this process only (lost on restart): for the embedded, single-process mode."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._spend: dict[str, tuple[float, float]] = {}
        self._clock = clock

    async def get(self, keys: Sequence[str]) -> list[float]:
        now = self._clock()
        out = []
        for key in keys:
            value, expires = self._spend.get(key, (0.0, 0.0))
            out.append(value if expires > now else 0.0)
        return out

    async def add(self, items: Sequence[tuple[str, float]], usd: float) -> None:
        now = self._clock()
        for key, ends in items:
            value, expires = self._spend.get(key, (0.0, 0.0))
            if expires <= now:
                value = 0.0
            self._spend[key] = (value + usd, ends + EXPIRY_GRACE_SECONDS)
        if len(self._spend) > 100_000:
            self._spend = {k: v for k, v in self._spend.items() if v[1] > now}

    async def aclose(self) -> None:
        return None


EXPIRY_INDEX = "thrifty:budget:expiry"
CLEANUP_EVERY = 600.0  # seconds between deletions of spend past its period
READ_TIMEOUT = 0.1  # seconds: a budget check is on every request's path
WRITE_TIMEOUT = 0.5
COOLDOWN = 2.0  # seconds without trying after a failure


class SpendStoreUnavailable(Exception):
    """Redis failed, was slow, or is cooling down after that."""


class RedisSpendStore:
    """Spend in Redis: `INCRBYFLOAT` per key (atomic across replicas), `MGET` to read. Calls
    have short timeouts and a breaker: a hung Redis costs one timeout, then `COOLDOWN` seconds
    of immediate `SpendStoreUnavailable` (the stage lets requests through), not a timeout on
    every request; the outage is logged once."""

    def __init__(self, client: Any, clock: Callable[[], float] = time.time) -> None:
        self._redis = client
        self._clock = clock
        self._next_cleanup = 0.0
        self._cleanup: asyncio.Task[None] | None = None
        # Reads and writes break apart: one slow read (a 0.1 s budget) must not stop the
        # spend of the requests after it from being written.
        self._breakers = {
            "get": CircuitBreaker(threshold=1, cooldown=COOLDOWN),
            "add": CircuitBreaker(threshold=1, cooldown=COOLDOWN),
        }

    async def _call(self, op: str, coro: Any, timeout: float) -> Any:
        breaker = self._breakers[op]
        was_up = breaker.opened_at is None
        try:
            result = await call_guarded(breaker, coro, timeout)
        except BreakerOpen:
            raise SpendStoreUnavailable(op) from None
        except Exception as exc:
            if was_up:
                log.warning("budget store unavailable (%s): %s", op, type(exc).__name__)
            raise SpendStoreUnavailable(op) from exc
        if not was_up:
            log.info("budget store reachable again (%s)", op)
        return result

    async def keys_named_since(self, gateway: str) -> float:
        """When `gateway` first kept its budgets under keys that name it (its first start after
        the upgrade; `SET NX`, never evicted: no TTL). Spend under the keys of before counts in
        the periods up to that moment only. Raises when Redis fails."""
        key = f"thrifty:budget:{gateway}:since"
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(key, repr(self._clock()), nx=True)
        pipe.get(key)
        _, value = await asyncio.wait_for(pipe.execute(), WRITE_TIMEOUT)
        return float(value)

    @classmethod
    def from_url(cls, url: str, *, password: str | None = None) -> RedisSpendStore:
        from redis import asyncio as aioredis

        client = aioredis.Redis.from_url(
            url, password=password, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        return cls(client)

    async def get(self, keys: Sequence[str]) -> list[float]:
        if not keys:
            return []
        values = await self._call("get", self._redis.mget(list(keys)), READ_TIMEOUT)
        return [float(v) if v is not None else 0.0 for v in values]

    async def add(self, items: Sequence[tuple[str, float]], usd: float) -> None:
        if not items:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, ends in items:
                pipe.incrbyfloat(key, usd)
                pipe.persist(key)  # spend from before it had no TTL: never evictable
                pipe.zadd(EXPIRY_INDEX, {key: int(ends) + EXPIRY_GRACE_SECONDS})
            await self._call("add", pipe.execute(), WRITE_TIMEOUT)
        now = self._clock()
        if now >= self._next_cleanup and (self._cleanup is None or self._cleanup.done()):
            # Off the request's path, and its failure is not the spend's.
            self._next_cleanup = now + CLEANUP_EVERY
            self._cleanup = asyncio.get_running_loop().create_task(self._drop_ended(now))

    async def _drop_ended(self, now: float) -> None:
        try:
            await drop_listed(self._redis, EXPIRY_INDEX, now)
        except Exception as exc:
            log.warning("budget spend cleanup failed: %s", type(exc).__name__)

    async def aclose(self) -> None:
        if self._cleanup is not None:
            await asyncio.gather(self._cleanup, return_exceptions=True)
        await self._redis.aclose()
