"""This replica's side of the budget spend: reservations, writes kept for a retry, and a copy of
the spend to check against while the store is unavailable.

* Every budgeted request reserves an estimate of its cost before it runs (`reserve`) and
  settles what it really cost after (`settle`; `release` when it failed): see store.py.
* Spend the store refused (Redis down, slow or cooling down) is kept and written again in the
  background with a growing pause, once: each settling carries the reservation's id, and a
  write that timed out after Redis applied it is not applied again (see `SpendStore.settle`).
  The batch path keeps its lines' spend the same way.
* The copy: the spend last read per key, what this replica wrote there since that read began,
  what it still has to write, and what its requests in flight hold. While the store cannot be
  read, budgets are checked against that copy (the per-replica fallback; a hard limit is then
  enforced from this replica's knowledge only, which is logged at most once a minute and counted
  in `thrifty_budget_local_checks`), never let through unchecked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .store import Check, Reading, SpendStore

log = logging.getLogger(__name__)

MAX_PAUSE = 30.0  # seconds between retries of kept spend while the store is down
MAX_KEPT = 10_000  # settlings kept one by one; beyond, spend is merged per set of budgets
WARN_EVERY = 60.0  # seconds between warnings that limits are checked from the local copy


@dataclass(slots=True)
class Reservation:
    """What one request holds: on which keys (with the epoch second their period ends), how
    much, and where: `hold` is its field in the store (None: nothing there to give back);
    `here` when the store did not answer the reserve and this replica's copy holds it (the
    store may hold it all the same: a reserve that timed out after Redis ran it)."""

    items: list[tuple[str, float]]
    usd: float
    hold: str | None
    done: bool = False
    here: bool = False
    once: str = ""  # id of its settling (the minute of the first try, then random)
    spent: float = 0.0  # what it settles


@dataclass(slots=True)
class _Key:
    seen: float = 0.0  # spend last read from the store (the key of before included)
    since: float = 0.0  # written by this replica since that read began
    unwritten: float = 0.0  # kept for a retry
    held: float = 0.0  # held by this replica's requests in flight
    held_here: float = 0.0  # of which only this copy holds (the store was unavailable)

    def view(self) -> float:
        """Spend plus holds as far as this replica knows."""
        return self.seen + self.since + self.unwritten + self.held


@dataclass(slots=True)
class SpendBook:
    """See the module docstring."""

    store: SpendStore
    on_store_error: Callable[[], None] = lambda: None
    on_local_check: Callable[[], None] = lambda: None
    clock: Callable[[], float] = time.monotonic
    _keys: dict[str, _Key] = field(default_factory=dict)
    _kept: dict[str, Reservation] = field(default_factory=dict)  # settlings to retry, by id
    _merged: dict[tuple[str, ...], Reservation] = field(default_factory=dict)
    _drain: asyncio.Task[None] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _warned_at: float | None = None
    _writing: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _key(self, key: str) -> _Key:
        found = self._keys.get(key)
        if found is None:
            if len(self._keys) > 100_000:  # keys of ended periods, nothing kept or held
                self._keys = {k: v for k, v in self._keys.items() if v.unwritten > 0 or v.held > 0}
            found = self._keys[key] = _Key()
        return found

    # -- reading ---------------------------------------------------------------------------

    async def spent(self, checks: Sequence[Check], *, fallback: bool = True) -> list[float]:
        """Each check's spend (the key of before included) and what this replica has not
        written yet. From this replica's copy when the store fails and `fallback` (else the
        store's error)."""
        keys = [c.key for c in checks]
        legacy = [c.legacy for c in checks if c.legacy]
        marks = [self._key(k).since for k in keys]
        try:
            values = await self.store.get(keys + legacy)
        except Exception:
            self.on_store_error()
            if not fallback:
                raise
            self._warn_local(checks)
            return [self._key(k).seen + self._key(k).since + self._key(k).unwritten for k in keys]
        out = values[: len(keys)]
        rest = iter(values[len(keys) :])
        for i, c in enumerate(checks):
            if c.legacy:
                out[i] += next(rest)
            self._seen(c.key, out[i], marks[i])
        return [v + self._key(k).unwritten for k, v in zip(keys, out, strict=True)]

    def _seen(self, key: str, value: float, mark: float) -> None:
        k = self._key(key)
        k.seen = value
        k.since = max(k.since - mark, 0.0)  # what was written after the read began stays

    def _warn_local(self, checks: Sequence[Check]) -> None:
        if not any(c.hard is not None for c in checks):
            return
        self.on_local_check()
        now = self.clock()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning(
                "budget store unavailable: hard limits are enforced from this replica's copy "
                "of the spend (the last read plus its own spend since)"
            )

    # -- reserving and settling ------------------------------------------------------------

    async def reserve(
        self, checks: Sequence[Check], ends: Sequence[float], usd: float
    ) -> tuple[Reading, Reservation | None]:
        """Check every budget and hold `usd` on each when all are under their hard limit (in
        the store, else in this replica's copy). The reading's spend includes what this
        replica has not written yet."""
        keys = [c.key for c in checks]
        items = list(zip(keys, ends, strict=True))
        marks = [self._key(k).since for k in keys]
        sent = [
            Check(c.key, c.legacy, c.hard, self._key(c.key).unwritten + self._key(c.key).held_here)
            for c in checks
        ]
        hold = self.store.new_hold()
        try:
            reading = await self.store.reserve(sent, usd, hold)
        except Exception:
            self.on_store_error()
            self._warn_local(checks)
            return self._reserve_here(checks, items, usd, hold)
        for c, value, mark in zip(checks, reading.spent, marks, strict=True):
            self._seen(c.key, value, mark)
        # What only this copy holds (reserved while the store was down) is held, not spent:
        # counted as spent, a budget held up by it was refused as used until the period ended.
        found = [self._key(k) for k in keys]
        spent = [s + k.unwritten for s, k in zip(reading.spent, found, strict=True)]
        held = [h + k.held_here for h, k in zip(reading.held, found, strict=True)]
        reading = Reading(reading.admitted, spent, held)
        if not reading.admitted:
            return reading, None
        res = Reservation(items, usd, hold if usd > 0 else None)
        for k in keys:
            self._key(k).held += usd
        return reading, res

    def _reserve_here(
        self, checks: Sequence[Check], items: list[tuple[str, float]], usd: float, hold: str
    ) -> tuple[Reading, Reservation | None]:
        """`hold`: the field the failed store call may have taken all the same (settling
        deletes it, which changes nothing when it was never taken)."""
        # No await from the check to the hold.
        found = [self._key(c.key) for c in checks]
        spent = [k.seen + k.since + k.unwritten for k in found]
        held = [k.held for k in found]
        admitted = all(
            c.hard is None or s + h < c.hard for c, s, h in zip(checks, spent, held, strict=True)
        )
        reading = Reading(admitted, spent, held)
        if not admitted:
            # The store may still have taken the hold (a timeout after Redis ran the script):
            # give it back.
            if usd > 0:
                self.release(Reservation(items, 0.0, hold))
            return reading, None
        for k in found:
            k.held += usd
            k.held_here += usd
        return reading, Reservation(items, usd, hold if usd > 0 else None, here=True)

    async def settle(self, res: Reservation, usd: float) -> None:
        """Add what the request cost and give its hold back (once). What the store refuses is
        kept and written again later."""
        if res.done:
            return
        res.done = True
        for key, _ in res.items:
            k = self._key(key)
            k.held = max(k.held - res.usd, 0.0)
            if res.here:
                k.held_here = max(k.held_here - res.usd, 0.0)
        res.spent = max(usd, 0.0)
        if res.spent == 0 and res.hold is None:
            return  # nothing spent, nothing held in the store
        res.once = f"{int(time.time() // 60)}:{os.urandom(8).hex()}"
        try:
            await self._write(res)
        except Exception as exc:
            self.on_store_error()
            self._keep(res, exc)

    async def _write(self, res: Reservation) -> None:
        await self.store.settle(res.items, res.spent, res.hold, res.once)
        for key, _ in res.items:
            self._key(key).since += res.spent

    def release(self, res: Reservation) -> None:
        """Give a failed request's hold back, in the background (from a sync callback)."""
        if res.done:
            return
        task = asyncio.get_running_loop().create_task(self.settle(res, 0.0))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- spend kept for a retry ------------------------------------------------------------

    def _keep(self, res: Reservation, exc: Exception) -> None:
        if not self._kept:
            log.warning("budget spend not written (kept for a retry): %s", type(exc).__name__)
        for key, _ in res.items:
            self._key(key).unwritten += res.spent
        if len(self._kept) < MAX_KEPT:
            self._kept[res.once] = res
        else:
            # A long outage: memory stays bounded. Merged spend is written once as a whole
            # (the holds of the merged requests expire with their slots instead).
            merged = self._merged.get(tuple(k for k, _ in res.items))
            if merged is None or merged.once not in self._kept or self._writing.locked():
                merged = Reservation(list(res.items), 0.0, None, True)
                merged.once = f"{int(time.time() // 60)}:{os.urandom(8).hex()}"
                self._merged[tuple(k for k, _ in res.items)] = merged
                self._kept[merged.once] = merged
            merged.spent += res.spent
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_task(self._retry())

    @property
    def unwritten(self) -> float:
        """Spend kept for a retry (a request's spend once, whatever budgets it falls under)."""
        return sum(res.spent for res in self._kept.values())

    async def flush(self) -> bool:
        """Write what is kept now; False when some of it is still kept."""
        async with self._writing:
            for once, res in list(self._kept.items()):
                try:
                    await self._write(res)
                except Exception:
                    self.on_store_error()
                    return False  # the store is still failing: the rest waits too
                del self._kept[once]
                which = tuple(k for k, _ in res.items)
                if self._merged.get(which) is res:
                    del self._merged[which]
                for key, _ in res.items:
                    k = self._key(key)
                    k.unwritten = max(k.unwritten - res.spent, 0.0)
            return True

    async def _retry(self) -> None:
        pause = 0.5
        while self._kept:
            await asyncio.sleep(pause)
            if await asyncio.shield(self.flush()):
                log.info("budget spend kept for a retry is written")
                return
            pause = min(pause * 2, MAX_PAUSE)

    async def aclose(self) -> None:
        """Settle what is in flight, write what is kept (one try), then close the store."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._drain is not None:
            self._drain.cancel()
            await asyncio.gather(self._drain, return_exceptions=True)
        if self._kept and not await self.flush():
            log.warning("budget spend lost at shutdown: $%.6f not written", self.unwritten)
        await self.store.aclose()
