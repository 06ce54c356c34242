"""Where budget spend lives: `SpendStore` with Redis (shared, durable across gateway restarts)
and in-memory (one process, embedded mode) implementations.

Keys name the scope, the owner and the period (`thrifty:budget:tenant:team-a:day:2026-11-27`)
and expire a day after their period ends, so nothing needs cleaning up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

EXPIRY_GRACE_SECONDS = 86400


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


class RedisSpendStore:
    """Spend in Redis: `INCRBYFLOAT` per key (atomic across replicas), `MGET` to read."""

    def __init__(self, client: Any) -> None:
        self._redis = client

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
        values = await self._redis.mget(list(keys))
        return [float(v) if v is not None else 0.0 for v in values]

    async def add(self, items: Sequence[tuple[str, float]], usd: float) -> None:
        if not items:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, ends in items:
                pipe.incrbyfloat(key, usd)
                pipe.expireat(key, int(ends) + EXPIRY_GRACE_SECONDS)
            await pipe.execute()

    async def aclose(self) -> None:
        await self._redis.aclose()
