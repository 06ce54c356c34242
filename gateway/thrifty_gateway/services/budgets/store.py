"""Where budget spend lives: `SpendStore` with Redis (shared, durable across gateway restarts)
and in-memory (one process, embedded mode) implementations.

Keys name the gateway, the scope, the owner and the period
(`thrifty:budget:team-ns/thrifty:tenant:team-a:day:2026-11-27`; a gateway run without the
operator names no gateway: `thrifty:budget:tenant:team-a:...`) and are kept until a day after
their period ends. In Redis they carry no TTL (the Redis they share with the cache evicts keys
that have one, `volatile-lru`, and spend must never be forgotten under memory pressure): the
sorted set `thrifty:budget:expiry` lists them by that time, and writers delete those past it.

Reservations: before a request runs, `reserve` checks every budget it falls under and, when all
are under their hard limit, holds an estimate of its cost on each, atomically (a Lua script in
Redis, no await in memory), so that concurrent requests see each other's cost before it is
known. `settle` adds what the request really cost and gives the hold back. Holds live in a
hash beside the spend key (`<key>:held`, one field per reservation, named by its minute slot
and a random id, with a TTL: a replica that dies mid-request leaves its holds for at most
`HOLD_SLOTS` minutes, and an evicted hash only forgets requests in flight, never spend).
Settling deletes the reservation's own field, so a reserve that timed out after Redis ran it
is given back all the same.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..redis_expiry import drop_listed
from ..resilience import BreakerOpen, CircuitBreaker, call_guarded
from .scripts import CHARGE_LINES, RESERVE, SETTLE

EXPIRY_GRACE_SECONDS = 86400
HOLD_SLOT_SECONDS = 60.0  # holds are kept per minute slot
HOLD_SLOTS = 10  # slots a hold counts for: a request running longer is no longer held
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Check:
    """One budget a reservation checks: its spend key, the key of before whose spend counts
    too (see `BudgetLine.legacy_key`), its hard limit (None: it never refuses) and what this
    replica spent or holds there that the store has not seen (`unseen`: writes waiting for a
    retry, holds taken while the store was unavailable)."""

    key: str
    legacy: str | None = None
    hard: float | None = None
    unseen: float = 0.0

    @property
    def held_key(self) -> str:
        return f"{self.key}:held"


@dataclass(frozen=True, slots=True)
class Reading:
    """What a reservation found, per check: the spend (the legacy key's included) and what
    requests in flight hold (every replica's, this one's before it); `admitted` when every check
    was under its hard limit (spend + held + unseen), and then `usd` is held."""

    admitted: bool
    spent: list[float]
    held: list[float]


def hold_slot(now: float) -> int:
    return int(now // HOLD_SLOT_SECONDS)


def new_hold(now: float) -> str:
    """A reservation's hold field: its minute slot (when it stops counting) and a random id."""
    return f"{hold_slot(now)}:{os.urandom(8).hex()}"


def _hold_slot_of(hold: str) -> int:
    return int(hold.partition(":")[0])


class SpendStore(Protocol):
    async def get(self, keys: Sequence[str]) -> list[float]:
        """Money spent so far under each key (0 when unknown)."""
        ...

    async def add(self, items: Sequence[tuple[str, float]], usd: float) -> None:
        """Add `usd` to every key; each item is (key, epoch second its period ends)."""
        ...

    def new_hold(self) -> str:
        """A fresh hold field for `reserve` (see `new_hold`), by this store's clock."""
        ...

    async def reserve(self, checks: Sequence[Check], usd: float, hold: str) -> Reading:
        """Check every budget and, when all are under their hard limit, hold `usd` on each
        under the field `hold`, in one atomic step. Raises when the store fails (the hold may
        have been taken all the same: settle it)."""
        ...

    async def settle(
        self,
        items: Sequence[tuple[str, float]],
        usd: float,
        hold: str | None,
        once: str | None = None,
    ) -> None:
        """Add `usd` to every key (as `add`) and delete the reservation's `hold` field (None:
        it holds nothing here); at most once per `once` (a settling's id) for
        `SETTLED_SECONDS`, so that a retry of a write that timed out after it was applied
        counts it once."""
        ...

    async def charge_lines(
        self,
        items: Sequence[tuple[str, float]],
        lines: Sequence[tuple[str, float]],
        bucket: str,
    ) -> None:
        """Add the spend of batch `lines` ((line id, usd)) to every key, each line at most once
        for `CHARGED_SECONDS` (a retry regroups lines: an id per line, not per write). `bucket`
        names where the ids are kept (the queue and the hour the lines finished in: ids of two
        queues never meet, and a budget period's ids do not pile up in one hash)."""
        ...

    async def aclose(self) -> None: ...


class MemorySpendStore:
    """Spend in this process only (lost on restart): for the embedded, single-process mode."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._spend: dict[str, tuple[float, float]] = {}
        self._held: dict[str, dict[str, float]] = {}  # key -> hold field -> usd
        self._clock = clock

    async def get(self, keys: Sequence[str]) -> list[float]:
        return self._values(keys, self._clock())

    def _values(self, keys: Sequence[str], now: float) -> list[float]:
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

    def new_hold(self) -> str:
        return new_hold(self._clock())

    def _held_now(self, key: str, slot: int) -> float:
        holds = self._held.get(key)
        if not holds:
            return 0.0
        for old in [h for h in holds if _hold_slot_of(h) < slot - HOLD_SLOTS]:
            del holds[old]
        return max(sum(holds.values()), 0.0)

    async def reserve(self, checks: Sequence[Check], usd: float, hold: str) -> Reading:
        # No await from the check to the hold: atomic on the event loop.
        now = self._clock()
        slot = hold_slot(now)
        spent = [sum(self._values([c.key, *([c.legacy] if c.legacy else [])], now)) for c in checks]
        held = [self._held_now(c.key, slot) for c in checks]
        admitted = all(
            c.hard is None or s + h + c.unseen < c.hard
            for c, s, h in zip(checks, spent, held, strict=True)
        )
        if admitted and usd > 0:
            for c in checks:
                self._held.setdefault(c.key, {})[hold] = usd
        return Reading(admitted, spent, held)

    async def settle(
        self,
        items: Sequence[tuple[str, float]],
        usd: float,
        hold: str | None,
        once: str | None = None,
    ) -> None:
        del once  # nothing here times out after it was applied
        if usd > 0:
            await self.add(items, usd)
        if hold is None:
            return
        for key, _ in items:
            holds = self._held.get(key)
            if holds is not None:
                holds.pop(hold, None)
                if not holds:
                    del self._held[key]

    async def charge_lines(
        self,
        items: Sequence[tuple[str, float]],
        lines: Sequence[tuple[str, float]],
        bucket: str,
    ) -> None:
        del bucket  # nothing here times out after it was applied
        usd = sum(u for _, u in lines)
        if usd > 0:
            await self.add(items, usd)

    async def aclose(self) -> None:
        return None


EXPIRY_INDEX = "thrifty:budget:expiry"
SETTLED_PREFIX = "thrifty:budget:settled:"
SETTLED_SECONDS = 600  # how long a settled reservation's id is remembered (retries come sooner)
CHARGED_SECONDS = 3 * 3600  # how long a charged batch line's id is (its retries span minutes)
CLEANUP_EVERY = 600.0  # seconds between deletions of spend past its period
READ_TIMEOUT = 0.25  # seconds: a budget check is on every request's path
WRITE_TIMEOUT = 0.5
FAILURES = 3  # failures in a row before the breaker opens (one slow call is event-loop lag)
COOLDOWN = 2.0  # seconds without trying after the breaker opened


class SpendStoreUnavailable(Exception):
    """Redis failed, was slow, or is cooling down after that."""


class RedisSpendStore:
    """Spend in Redis: `INCRBYFLOAT` per key (atomic across replicas), `MGET` to read, Lua
    scripts to reserve and settle. Calls have short timeouts and a breaker: a hung Redis costs
    `FAILURES` timeouts, then `COOLDOWN` seconds of immediate `SpendStoreUnavailable` (the stage
    checks against this replica's copy of the spend meanwhile), not a timeout on every request;
    the outage is logged once."""

    def __init__(self, client: Any, clock: Callable[[], float] = time.time) -> None:
        self._redis = client
        self._clock = clock
        self._next_cleanup = 0.0
        self._cleanup: asyncio.Task[None] | None = None
        # Reads and writes break apart: slow reads (a short budget) must not stop the spend
        # of the requests after them from being written.
        self._breakers = {
            "get": CircuitBreaker(threshold=FAILURES, cooldown=COOLDOWN),
            "add": CircuitBreaker(threshold=FAILURES, cooldown=COOLDOWN),
        }
        self._reserve = client.register_script(RESERVE)
        self._settle = client.register_script(SETTLE)
        self._charge_lines = client.register_script(CHARGE_LINES)

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
        self._maybe_clean()

    def new_hold(self) -> str:
        return new_hold(self._clock())

    async def reserve(self, checks: Sequence[Check], usd: float, hold: str) -> Reading:
        slot = hold_slot(self._clock())
        keys: list[str] = []
        ttl = int(HOLD_SLOT_SECONDS * (HOLD_SLOTS + 2))
        args: list[Any] = [repr(usd), hold, slot - HOLD_SLOTS, ttl]
        for c in checks:
            keys += [c.key, c.held_key, *([c.legacy] if c.legacy else [])]
            args += ["" if c.hard is None else repr(c.hard), repr(c.unseen), 1 if c.legacy else 0]
        out = await self._call("get", self._reserve(keys=keys, args=args), READ_TIMEOUT)
        values = [float(v) for v in out[1:]]
        return Reading(bool(int(out[0])), values[0::2], values[1::2])

    async def settle(
        self,
        items: Sequence[tuple[str, float]],
        usd: float,
        hold: str | None,
        once: str | None = None,
    ) -> None:
        if not items:
            return
        # Reservations settled in one minute share one hash of ids (the minute of the first
        # try: `once` carries it), which lives `SETTLED_SECONDS` after its last write.
        minute = once.partition(":")[0] if once else "0"
        keys = [EXPIRY_INDEX, f"{SETTLED_PREFIX}{minute}"]
        args: list[Any] = [repr(max(usd, 0.0)), hold or "", "", once or "", SETTLED_SECONDS]
        for key, ends in items:
            keys += [key, f"{key}:held"]
            args.append(int(ends) + EXPIRY_GRACE_SECONDS)
        await self._call("add", self._settle(keys=keys, args=args), WRITE_TIMEOUT)
        self._maybe_clean()

    async def charge_lines(
        self,
        items: Sequence[tuple[str, float]],
        lines: Sequence[tuple[str, float]],
        bucket: str,
    ) -> None:
        if not items or not lines:
            return
        keys = [EXPIRY_INDEX, f"thrifty:budget:charged:{bucket}", *(key for key, _ in items)]
        args: list[Any] = [CHARGED_SECONDS, len(items)]
        args += [int(ends) + EXPIRY_GRACE_SECONDS for _, ends in items]
        for line_id, usd in lines:
            args += [line_id, repr(max(usd, 0.0))]
        await self._call("add", self._charge_lines(keys=keys, args=args), WRITE_TIMEOUT)
        self._maybe_clean()

    def _maybe_clean(self) -> None:
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
