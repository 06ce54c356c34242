"""Exact stores: an in-process LRU (the embedded default) and Redis.

Both map a cache key to an encoded `CachedAnswer` with a TTL. The memory store caps the entry
count (LRU eviction); Redis relies on its maxmemory policy. Redis calls have short timeouts and
a short cool-down after a failure: a slow or dead Redis means a cache bypass (counted in
`thrifty_cache_errors`), never a failed request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any, Protocol

from .entry import CachedAnswer, Codec
from .selector import Selector

log = logging.getLogger(__name__)


PURGE_TIMEOUT = 10.0  # seconds for one purge call (a page read, a bulk delete)
PURGE_PAGE = 10_000  # index members read per call


class StoreUnavailable(Exception):
    """The backing store failed or timed out; the caller bypasses the cache."""


class ExactStore(Protocol):
    async def get(self, key: str) -> CachedAnswer | None: ...

    async def put(self, key: str, entry: CachedAnswer, ttl: int) -> None: ...

    async def purge(self, selector: Selector) -> int: ...

    async def aclose(self) -> None: ...


class MemoryExactStore:
    """In-process store: LRU with a size cap and per-entry expiry (values kept encoded)."""

    def __init__(self, max_entries: int, codec: Codec, max_entry_bytes: int) -> None:
        self._data: OrderedDict[str, tuple[bytes, float, CachedAnswer]] = OrderedDict()
        self._max = max_entries
        self._codec = codec
        self._max_bytes = max_entry_bytes
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, key: str) -> CachedAnswer | None:
        item = self._data.get(key)
        if item is None:
            return None
        _, expires, entry = item
        if expires <= time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return entry

    async def put(self, key: str, entry: CachedAnswer, ttl: int) -> None:
        blob = self._codec.encode(entry)
        if len(blob) > self._max_bytes:
            return
        self._data[key] = (blob, time.monotonic() + ttl, entry)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)
            self.evictions += 1

    async def purge(self, selector: Selector) -> int:
        now = time.time()
        doomed = [k for k, (_, _, e) in self._data.items() if selector.matches(e, now)]
        for key in doomed:
            del self._data[key]
        return len(doomed)

    async def aclose(self) -> None:
        self._data.clear()


class RedisExactStore:
    """Redis store: zstd values under `<prefix>e:<key>`, purge indexes as sorted sets
    (score = creation time) per tenant, route, model and tag."""

    def __init__(
        self,
        url: str,
        prefix: str,
        codec: Codec,
        max_entry_bytes: int,
        *,
        password: str | None = None,
        timeout: float = 0.1,
        cooldown: float = 2.0,
        client: Any | None = None,
    ) -> None:
        import redis.asyncio as aioredis

        self._redis: Any = client or aioredis.Redis.from_url(
            url,
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._prefix = prefix
        self._codec = codec
        self._max_bytes = max_entry_bytes
        self._timeout = timeout
        self._cooldown = cooldown
        self._down_until = 0.0
        # Purges read whole indexes and delete in bulk: their own connection, with timeouts
        # fit for that, so they neither trip the lookups' cool-down nor time out on a big cache.
        self._admin: Any = client or aioredis.Redis.from_url(
            url,
            password=password,
            socket_timeout=PURGE_TIMEOUT,
            socket_connect_timeout=1.0,
            retry_on_timeout=False,
            health_check_interval=0,
        )

    def _k(self, key: str) -> str:
        return f"{self._prefix}e:{key}"

    def _idx(self, kind: str, value: str) -> str:
        return f"{self._prefix}i:{kind}:{value}"

    async def _call(self, op: str, coro: Any) -> Any:
        if time.monotonic() < self._down_until:
            coro.close()
            raise StoreUnavailable(f"redis cooling down ({op})")
        try:
            return await asyncio.wait_for(coro, self._timeout * 2)
        except Exception as exc:  # redis errors, timeouts, connection refused
            from redis.exceptions import ResponseError

            # Redis answered with an error (a full `noeviction` Redis refusing a write): it is
            # up, and reads still work, so no cool-down. Unreachable or slow: cool down.
            if not isinstance(exc, ResponseError):
                self._down_until = time.monotonic() + self._cooldown
            log.warning("redis %s failed: %s", op, type(exc).__name__)
            raise StoreUnavailable(op) from exc

    async def get(self, key: str) -> CachedAnswer | None:
        blob = await self._call("get", self._redis.get(self._k(key)))
        return None if blob is None else self._codec.decode(blob)

    async def put(self, key: str, entry: CachedAnswer, ttl: int) -> None:
        blob = self._codec.encode(entry)
        if len(blob) > self._max_bytes:
            return
        member = self._k(key)
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(member, blob, ex=ttl)
        labels = [("all", "*"), ("tenant", entry.tenant), ("route", entry.route)]
        labels += [("model", entry.model)] + [("tag", t) for t in entry.tags]
        for kind, value in labels:
            idx = self._idx(kind, value)
            pipe.zadd(idx, {member: entry.created})
            pipe.zremrangebyscore(idx, "-inf", entry.created - ttl)  # forget expired keys
            pipe.expire(idx, ttl)
        await self._call("put", pipe.execute())

    async def purge(self, selector: Selector) -> int:
        """Delete the entries matching `selector`, reading the purge indexes page by page; a
        failure raises `StoreUnavailable` without cooling the lookups down."""
        try:
            return await asyncio.wait_for(self._purge(selector), PURGE_TIMEOUT * 4)
        except Exception as exc:
            log.warning("redis purge failed: %s", type(exc).__name__)
            raise StoreUnavailable("purge") from exc

    async def _members(self, index: str, top: float | str) -> set[bytes]:
        found: set[bytes] = set()
        offset = 0
        while True:
            page = await self._admin.zrangebyscore(index, "-inf", top, start=offset, num=PURGE_PAGE)
            found.update(page)
            if len(page) < PURGE_PAGE:
                return found
            offset += PURGE_PAGE

    async def _purge(self, selector: Selector) -> int:
        dims: list[tuple[str, str | None]] = [
            ("tenant", selector.tenant),
            ("route", selector.route),
            ("model", selector.model),
            ("tag", selector.tag),
        ]
        chosen = [(k, v) for k, v in dims if v is not None] or [("all", "*")]
        all_dims: list[tuple[str, str | None]] = [*dims, ("all", "*")]
        top: float | str = (
            "+inf"
            if selector.older_than_seconds is None
            else time.time() - selector.older_than_seconds
        )
        members: set[bytes] | None = None
        for kind, value in chosen:
            found = await self._members(self._idx(kind, value), top)
            members = found if members is None else members & found
        if not members:
            return 0
        removed = 0
        batch = list(members)
        for i in range(0, len(batch), 500):
            removed += int(await self._admin.delete(*batch[i : i + 500]))
        for i in range(0, len(batch), PURGE_PAGE):
            pipe = self._admin.pipeline(transaction=False)
            for dim, label in all_dims:
                if label is not None:
                    pipe.zrem(self._idx(dim, label), *batch[i : i + PURGE_PAGE])
            await pipe.execute()
        return removed

    async def aclose(self) -> None:
        await self._redis.aclose()
        if self._admin is not self._redis:
            await self._admin.aclose()
