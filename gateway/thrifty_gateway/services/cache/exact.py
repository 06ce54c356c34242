"""Exact stores: an in-process LRU (the embedded default) and Redis.

Both map a cache key to an encoded `CachedAnswer` with a TTL. The memory store caps the entry
count (LRU eviction); Redis evicts under its maxmemory policy (`volatile-lru` for the managed
one: the ledger, budgets and rate limits it also holds have no TTL and are never evicted).
Redis calls have short timeouts and a short cool-down after a failure: a slow or dead Redis
means a cache bypass (counted in `thrifty_cache_errors`), never a failed request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from typing import Any, Literal, Protocol

import orjson

from ..redis_client import fast_redis
from ..resilience import BreakerOpen, CircuitBreaker, call_guarded
from .entry import CachedAnswer, Codec
from .selector import Selector

log = logging.getLogger(__name__)


PURGE_TIMEOUT = 10.0  # seconds for one purge call (a page read, a bulk delete)
PURGE_PAGE = 1_000  # entries scanned and labels read per round trip


# Store an entry (KEYS[1]) with its TTL (ARGV[2]) and fields (ARGV[3..], always the same six:
# they overwrite the old ones) unless the fence (KEYS[2]) moved away from ARGV[1] (an empty
# ARGV[1]: store unconditionally). HSET is the script's first write: a Redis over maxmemory
# refuses it (OOM), where a write after another write in a script would be let through.
_PUT = """
if ARGV[1] ~= '' and (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


# An entry's value (KEYS[1]) and the fence (KEYS[2]); false (nil) comes back as None.
_LOOKUP = """
return {redis.call('HGET', KEYS[1], 'v'), redis.call('GET', KEYS[2])}
"""

# Advance the fence (KEYS[1]) and log the purge (its selector ARGV[1], its time ARGV[2]) under
# the fence's new value in the purge log (KEYS[2], a stream capped near ARGV[3] entries), in one
# step: a replica that reads the new fence always finds its purge in the log.
# Each entry's id is `<n>-1`, so the purges between two fences are one exact range. A log
# ahead of the fence (the fence key alone lost) is started again.
_PURGE = """
local n = redis.call('INCR', KEYS[1])
local id = n .. '-1'
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id,
  'n', n, 's', ARGV[1], 't', ARGV[2])
if type(added) == 'table' and added.err then
  redis.call('DEL', KEYS[2])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id, 'n', n, 's', ARGV[1], 't', ARGV[2])
end
return n
"""
PURGE_LOG_LENGTH = 1_000  # purges kept for replicas that have not applied them yet

Put = Literal["stored", "too_large", "purged"]  # "purged": a purge started since the fence


class StoreUnavailable(Exception):
    """The backing store failed or timed out; the caller bypasses the cache."""


class ExactStore(Protocol):
    """An exact store, with a purge fence: a counter every purge advances before it deletes.
    A request reads the fence with its lookup and stores its answer only if no purge started
    since (`put(..., fence=)`): an answer that was upstream while a purge ran may be what the
    purge meant to remove. The Redis store keeps the fence in Redis, so a purge on one replica
    fences the answers in flight on every replica."""

    async def get(self, key: str) -> CachedAnswer | None: ...

    async def lookup(self, key: str) -> tuple[CachedAnswer | None, str]:
        """The entry and the purge fence, read together."""
        ...

    async def fence(self) -> str: ...

    async def put(self, key: str, entry: CachedAnswer, ttl: int, fence: str | None = None) -> Put:
        """Store `entry`; with `fence`, only if no purge started since it was read."""
        ...

    async def purge(self, selector: Selector) -> int: ...

    async def aclose(self) -> None: ...


class MemoryExactStore:
    """In-process store: LRU with a size cap and per-entry expiry. Values are kept encoded
    (compressed when the policy says so) and decoded on each hit; purges read the labels kept
    beside them."""

    def __init__(self, max_entries: int, codec: Codec, max_entry_bytes: int) -> None:
        # key -> (encoded answer, expiry, labels: the answer with an empty body)
        self._data: OrderedDict[str, tuple[bytes, float, CachedAnswer]] = OrderedDict()
        self._max = max_entries
        self._codec = codec
        self._max_bytes = max_entry_bytes
        self._purges = 0  # the fence
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    async def fence(self) -> str:
        return str(self._purges)

    async def lookup(self, key: str) -> tuple[CachedAnswer | None, str]:
        return await self.get(key), str(self._purges)

    async def get(self, key: str) -> CachedAnswer | None:
        item = self._data.get(key)
        if item is None:
            return None
        blob, expires, _ = item
        if expires <= time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return self._codec.decode(blob)

    async def put(self, key: str, entry: CachedAnswer, ttl: int, fence: str | None = None) -> Put:
        if fence is not None and fence != str(self._purges):
            return "purged"
        blob = self._codec.encode(entry)
        if len(blob) > self._max_bytes:
            return "too_large"
        self._data[key] = (blob, time.monotonic() + ttl, dataclasses.replace(entry, body={}))
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)
            self.evictions += 1
        return "stored"

    async def purge(self, selector: Selector) -> int:
        self._purges += 1
        now = time.time()
        doomed = [k for k, (_, _, e) in self._data.items() if selector.matches(e, now)]
        for key in doomed:
            del self._data[key]
        return len(doomed)

    async def aclose(self) -> None:
        self._data.clear()


class RedisExactStore:
    """Redis store: one hash per entry under `<prefix>h:<key>`, with a TTL. Field `v` holds the
    zstd value; `tenant`, `route`, `model`, `tags` and `created` are what purges select on.

    No index beside the entries: a purge scans the policy's entries (`SCAN` + the small label
    fields, on its own connection) and deletes those it selects. An index would be a second key
    per entry that eviction or expiry can separate from it: under memory pressure a quiet tag's
    index was evicted first and its purge found nothing, and indexes of evicted entries grew
    until they crowded the answers out. Here an entry and its labels live and go together.
    """

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
        from redis.exceptions import ResponseError

        self._redis: Any = client or fast_redis(url, password=password, timeout=timeout)
        self._prefix = prefix
        self._codec = codec
        self._max_bytes = max_entry_bytes
        self._timeout = timeout
        # After a failure, lookups bypass for `cooldown` seconds; then ONE call probes Redis
        # while the others keep bypassing (every request in flight retrying a hung Redis at
        # once would each wait a timeout).
        self._breaker = CircuitBreaker(threshold=1, cooldown=cooldown)
        # Redis answered with an error (a full `noeviction` Redis refusing a write): it is up,
        # and reads still work, so no cool-down. Unreachable or slow: cool down.
        self._answered: tuple[type[BaseException], ...] = (ResponseError,)
        # Purges scan and delete in bulk: their own connection, with timeouts fit for that, so
        # they neither trip the lookups' cool-down nor time out on a big cache.
        self._admin: Any = client or fast_redis(
            url, password=password, timeout=PURGE_TIMEOUT, connect_timeout=1.0
        )

        self._fence = f"{prefix}purges"  # no TTL: `volatile-lru` never evicts it
        self._log = f"{prefix}purge-log"  # (nor this: `PURGE_LOG_LENGTH` bounds it)
        self._put = self._redis.register_script(_PUT)
        self._lookup = self._redis.register_script(_LOOKUP)
        self._advance = self._admin.register_script(_PURGE)

    def _k(self, key: str) -> str:
        return f"{self._prefix}h:{key}"

    async def _call(self, op: str, coro: Any) -> Any:
        try:
            return await call_guarded(
                self._breaker, coro, self._timeout * 2, answered=self._answered
            )
        except BreakerOpen:
            raise StoreUnavailable(f"redis cooling down ({op})") from None
        except Exception as exc:  # redis errors, timeouts, connection refused
            log.warning("redis %s failed: %s", op, type(exc).__name__)
            raise StoreUnavailable(op) from exc

    async def eviction_policy(self) -> str | None:
        """Redis's `maxmemory-policy`, or None when it cannot be read (managed Redis services
        often disable `CONFIG`). Logs a warning when it may evict keys without a TTL: the
        purge fence, and the ledger, budgets and rate limits a shared Redis also holds."""
        try:
            found = await asyncio.wait_for(self._admin.config_get("maxmemory-policy"), 2.0)
        except Exception:
            return None
        policy = str(found.get("maxmemory-policy", "")) or None
        if policy is not None and policy.startswith("allkeys-"):
            log.warning(
                "redis maxmemory-policy is %s: under memory pressure it may evict keys without a "
                "TTL (the purge fence; usage, budget spend and rate limits when they share this "
                "Redis); use volatile-lru or noeviction",
                policy,
            )
        return policy

    async def get(self, key: str) -> CachedAnswer | None:
        blob = await self._call("get", self._redis.hget(self._k(key), "v"))
        return await self._decode(key, blob)

    async def _decode(self, key: str, blob: bytes | None) -> CachedAnswer | None:
        """The stored answer; a value that does not decode (corrupt, another program's, an
        older format) is a miss, and is deleted so the next answer replaces it."""
        if not blob:
            return None
        try:
            return self._codec.decode(blob)
        except Exception as exc:
            log.warning("undecodable exact cache entry dropped: %s", type(exc).__name__)
            try:
                await self._call("drop", self._redis.delete(self._k(key)))
            except StoreUnavailable:
                pass
            return None

    async def fence(self) -> str:
        return _text(await self._call("fence", self._redis.get(self._fence)))

    async def lookup(self, key: str) -> tuple[CachedAnswer | None, str]:
        # One script, one round trip: cheaper in redis-py than a two-command pipeline.
        blob, fence = await self._call("get", self._lookup(keys=[self._k(key), self._fence]))
        return await self._decode(key, blob), _text(fence)

    async def put(self, key: str, entry: CachedAnswer, ttl: int, fence: str | None = None) -> Put:
        blob = self._codec.encode(entry)
        if len(blob) > self._max_bytes:
            return "too_large"
        fields: list[bytes | str] = ["v", blob]
        for name, value in zip(LABELS, _labels_of(entry), strict=True):
            fields += [name, value]
        # One script: the fence check, and never an entry without its TTL.
        args = ["" if fence is None else fence, ttl, *fields]
        stored = await self._call("put", self._put(keys=[self._k(key), self._fence], args=args))
        return "stored" if stored else "purged"

    async def purge(self, selector: Selector) -> int:
        """Advance the fence, then delete the entries matching `selector`; a failure raises
        `StoreUnavailable` without cooling the lookups down."""
        try:
            logged = orjson.dumps(dataclasses.asdict(selector))
            args: list[bytes | str | int] = [logged, repr(time.time()), PURGE_LOG_LENGTH]
            await asyncio.wait_for(
                self._advance(keys=[self._fence, self._log], args=args), PURGE_TIMEOUT
            )
            return await asyncio.wait_for(self._purge(selector), PURGE_TIMEOUT * 30)
        except Exception as exc:
            log.warning("redis purge failed: %s", type(exc).__name__)
            raise StoreUnavailable("purge") from exc

    async def purges_since(self, applied: str, fence: str) -> list[tuple[Selector, float]] | None:
        """The purges that advanced the fence from `applied` to `fence`, in order, each with
        the time it ran: what a replica's own (embedded) semantic index has still to apply.
        None when the log no longer holds them all (trimmed, or written by a gateway that
        kept no log): the caller drops its whole index."""
        first, last = int(applied) + 1, int(fence)
        if last < first:
            return []
        if last - first >= PURGE_LOG_LENGTH:
            return None
        rows = await self._call(
            "purge-log", self._redis.xrange(self._log, min=f"{first}-1", max=f"{last}-1")
        )
        found: dict[int, tuple[Selector, float]] = {}
        for _, fields in rows:
            n = int(fields[b"n"])
            if first <= n <= last:
                found[n] = (Selector(**orjson.loads(fields[b"s"])), float(fields[b"t"]))
        if len(found) != last - first + 1:
            return None
        return [found[n] for n in range(first, last + 1)]

    async def _purge(self, selector: Selector) -> int:
        now = time.time()
        removed = 0
        batch: list[bytes] = []
        async for name in self._admin.scan_iter(match=f"{self._prefix}h:*", count=PURGE_PAGE):
            batch.append(name)
            if len(batch) >= PURGE_PAGE:
                removed += await self._purge_batch(batch, selector, now)
                batch = []
        if batch:
            removed += await self._purge_batch(batch, selector, now)
        return removed

    async def _purge_batch(self, names: list[bytes], selector: Selector, now: float) -> int:
        if selector.everything:
            return int(await self._admin.delete(*names))
        pipe = self._admin.pipeline(transaction=False)
        for name in names:
            pipe.hmget(name, LABELS)
        doomed = [
            name
            for name, labels in zip(names, await pipe.execute(), strict=True)
            if labels[0] is not None and selector.matches(_labelled(labels), now)
        ]
        return int(await self._admin.delete(*doomed)) if doomed else 0

    async def aclose(self) -> None:
        await self._redis.aclose()
        if self._admin is not self._redis:
            await self._admin.aclose()


def _text(fence: bytes | None) -> str:
    return fence.decode() if fence else "0"


# The fields a purge reads beside the answer, in the order `_labels_of` and `_labelled` use.
LABELS = ["tenant", "route", "model", "tags", "created", "gateway"]


def _labels_of(entry: CachedAnswer) -> list[str]:
    # tags never hold a comma (eligibility.parse_tags)
    tags = ",".join(entry.tags)
    return [entry.tenant, entry.route, entry.model, tags, repr(entry.created), entry.gateway]


def _labelled(labels: list[bytes | None]) -> CachedAnswer:
    """The labels of a stored entry as an (empty-bodied) `CachedAnswer` a selector reads."""
    tenant, route, model, tags, created, gateway = (b.decode() if b else "" for b in labels)
    return CachedAnswer(
        body={},
        tenant=tenant,
        route=route,
        model=model,
        created=float(created or 0),
        tags=tuple(t for t in tags.split(",") if t),
        gateway=gateway,
    )
