"""The ledger's hourly buckets shared by every gateway replica, in Redis (`ledger.redisUrl`).

Each replica keeps counting in memory and adds what it recorded to Redis after the response:
`record()` only merges the request's figures into a pending delta per bucket, and a background
task writes the pending deltas in one pipelined transaction (`HINCRBY` / `HINCRBYFLOAT`) a
moment later, so many requests cost one round trip and none waits on Redis. A bucket is one
hash `thrifty:ledger:<namespace>/<gateway>:b:[start,tenant,route,model]` (fields `requests`,
`cost_usd`, `saved:<lever>`, `lever:<lever>`, `tier:<tier>`, ...) listed in the sorted set
`thrifty:ledger:<namespace>/<gateway>:index` (score: the hour's start); a gateway run without
the operator names none (`thrifty:ledger:b:...`). Buckets carry no TTL, so a `volatile-lru`
Redis shared with the cache never evicts them; writers delete those past the retention.

When Redis fails or is slow (short socket timeouts) the deltas stay pending and are retried
with a growing pause, and the failure is logged and counted in
`thrifty_ledger_shared_errors_total`; the replica's own memory figures keep counting. A write
that timed out after Redis applied it is retried too (at-least-once): figures can then count a
batch twice, never lose one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import orjson
from prometheus_client import Counter

from .ledger import HOUR, Key, Totals
from .redis_expiry import drop_listed

log = logging.getLogger(__name__)

PREFIX = "thrifty:ledger:"
FLUSH_DELAY = 0.02  # seconds: requests finishing together share one write
TIMEOUT = 2.0  # seconds for one pipelined write or read
MAX_PAUSE = 30.0  # seconds between retries while Redis is down
READ_CHUNK = 500  # buckets per pipelined read
CLEANUP_EVERY = 600.0  # seconds between deletions of buckets past the retention
# How long a mark says its line was recorded. A live gateway takes a dead one's lines over
# within about 90 s (`batching.stage`); if every gateway stays down longer than this, such
# lines may count twice. One short key per batch line for this long: about 10 MB of Redis per
# 100,000 lines an hour.
MARK_SECONDS = 3600
_INT_FIELDS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens")


def to_fields(t: Totals) -> tuple[dict[str, int], dict[str, float]]:
    """(integer fields, float fields) of a delta, zeros left out."""
    ints = {name: getattr(t, name) for name in _INT_FIELDS if getattr(t, name)}
    ints.update({f"lever:{k}": n for k, n in t.served_by_lever.items() if n})
    ints.update({f"tier:{k}": n for k, n in t.served_by_tier.items() if n})
    floats = {"cost_usd": t.cost_usd, "baseline_usd": t.baseline_usd}
    floats.update({f"saved:{k}": v for k, v in t.saved_usd.items()})
    return ints, {k: v for k, v in floats.items() if v}


def from_fields(fields: dict[bytes, bytes]) -> Totals:
    """A bucket's hash read back into `Totals` (unknown fields ignored)."""
    t = Totals()
    for raw_name, raw_value in fields.items():
        name, value = raw_name.decode(), raw_value.decode()
        kind, _, sub = name.partition(":")
        if name in _INT_FIELDS:
            setattr(t, name, int(value))
        elif name in ("cost_usd", "baseline_usd"):
            setattr(t, name, float(value))
        elif kind == "saved" and sub:
            t.saved_usd[sub] = float(value)
        elif kind == "lever" and sub:
            t.served_by_lever[sub] = int(value)
        elif kind == "tier" and sub:
            t.served_by_tier[sub] = int(value)
    return t


def bucket_id(key: Key) -> bytes:
    return orjson.dumps(list(key))


def ledger_prefix(gateway: str) -> str:
    """Keys per gateway (`namespace/name`, no ':'), so that two gateways on one Redis never
    count each other's tenants of the same name; '' (a gateway run without the operator) keeps
    the keys of before."""
    return f"{PREFIX}{gateway}:" if gateway else PREFIX


def bucket_name(member: bytes, prefix: str = PREFIX) -> bytes:
    """The Redis key of the bucket the index under `prefix` lists as `member`."""
    return prefix.encode() + b"b:" + member


class SharedBuckets:
    """Pending deltas and their writer; reads every replica's buckets back."""

    def __init__(
        self,
        client: Any,
        registry: Any,
        retention_hours: int,
        clock: Callable[[], float] = time.time,
        gateway: str = "",
    ) -> None:
        self.client = client
        self._prefix = ledger_prefix(gateway)
        self._retention = retention_hours * HOUR
        self._clock = clock
        self._pending: dict[Key, Totals] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._next_cleanup = 0.0
        self.errors = Counter(
            "thrifty_ledger_shared_errors",
            "Shared ledger (Redis) writes or reads that failed; figures kept in memory.",
            ["op"],
            registry=registry,
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        registry: Any,
        retention_hours: int,
        *,
        password: str | None = None,
        gateway: str = "",
    ) -> SharedBuckets:
        from redis import asyncio as aioredis

        client = aioredis.Redis.from_url(
            url, password=password, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        return cls(client, registry, retention_hours, gateway=gateway)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def failing(self) -> bool:
        """The last write failed (Redis down or slow)."""
        return self._failing

    def add(self, key: Key, delta: Totals) -> None:
        """Queue a delta (called from the event loop, after the response)."""
        found = self._pending.get(key)
        if found is None:
            self._pending[key] = delta
        else:
            found.add(delta)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        pause = 0.5
        await asyncio.sleep(FLUSH_DELAY)
        while self._pending:
            # Shielded: `aclose` cancels this task, and a write cancelled mid-flight would lose
            # its batch (taken out of `_pending`, maybe never written); `aclose` then waits
            # for it on the lock and writes what is left.
            if await asyncio.shield(self.flush()):
                pause = 0.5
            else:
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE)

    async def flush(self, marks: Sequence[str] = ()) -> bool:
        """Write the pending deltas now, with `marks` (`recorded`) in the same transaction;
        False (deltas kept for a retry, marks dropped) when Redis fails."""
        async with self._lock:
            if not self._pending and not marks:
                return True
            batch, self._pending = self._pending, {}
            try:
                await asyncio.wait_for(self._write(batch, marks), TIMEOUT)
            except Exception as exc:
                for key, delta in batch.items():
                    self._pending.setdefault(key, Totals()).add(delta)
                self.errors.labels("write").inc()
                if not self._failing:
                    log.warning(
                        "shared ledger unavailable; counting in memory: %s", type(exc).__name__
                    )
                self._failing = True
                return False
            if self._failing:
                log.info("shared ledger reachable again")
            self._failing = False
        now = self._clock()
        if now >= self._next_cleanup:  # after the write, never retried with it
            self._next_cleanup = now + CLEANUP_EVERY
            try:
                await asyncio.wait_for(self._drop_older_than(now - self._retention - HOUR), TIMEOUT)
            except Exception as exc:
                log.warning("shared ledger cleanup failed: %s", type(exc).__name__)
        return True

    async def recorded(self, marks: Sequence[str]) -> set[str]:
        """Which of `marks` a flush wrote: what a writer records at most once (a batch line
        recorded, then acknowledged in another Redis, by a gateway that may die in between)."""
        if not marks:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for mark in marks:
            pipe.exists(self._prefix + "mark:" + mark)
        flags = await asyncio.wait_for(pipe.execute(), TIMEOUT)
        return {m for m, flag in zip(marks, flags, strict=True) if flag}

    async def _write(self, batch: dict[Key, Totals], marks: Sequence[str] = ()) -> None:
        pipe = self.client.pipeline(transaction=True)
        for mark in marks:
            pipe.set(self._prefix + "mark:" + mark, 1, ex=MARK_SECONDS)
        index = self._prefix + "index"
        for key, delta in batch.items():
            member = bucket_id(key)
            name = bucket_name(member, self._prefix)
            ints, floats = to_fields(delta)
            for field, n in ints.items():
                pipe.hincrby(name, field, n)
            for field, usd in floats.items():
                pipe.hincrbyfloat(name, field, usd)
            pipe.persist(name)  # a bucket from before they had no TTL: never evictable
            pipe.zadd(index, {member: key[0]})
        await pipe.execute()

    async def _drop_older_than(self, cutoff: float) -> None:
        """Delete the buckets past the retention (they carry no TTL: see `redis_expiry`), and
        those of the keys before they named a gateway, which nobody writes after an upgrade."""
        for prefix in {self._prefix, PREFIX}:
            await drop_listed(
                self.client, prefix + "index", cutoff, partial(bucket_name, prefix=prefix)
            )

    async def read(self, since: float | None) -> list[tuple[Key, Totals]]:
        """Every replica's buckets (those overlapping `since` onwards)."""
        return await asyncio.wait_for(self._read(since), TIMEOUT)

    async def _read(self, since: float | None) -> list[tuple[Key, Totals]]:
        low: float | str = since - HOUR if since is not None else "-inf"
        members: list[bytes] = await self.client.zrangebyscore(self._prefix + "index", low, "+inf")
        out: list[tuple[Key, Totals]] = []
        for chunk in _chunks(members, READ_CHUNK):
            pipe = self.client.pipeline(transaction=False)
            for member in chunk:
                pipe.hgetall(bucket_name(member, self._prefix))
            for member, fields in zip(chunk, await pipe.execute(), strict=True):
                if fields:  # expired since the index was read
                    start, tenant, route, model = orjson.loads(member)
                    key = (int(start), str(tenant), str(route), str(model))
                    out.append((key, from_fields(fields)))
        return out

    async def aclose(self) -> None:
        """Write what is pending (one try) and close the connection."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.flush()
        await self.client.aclose()


def _chunks(items: list[bytes], size: int) -> Iterable[list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
