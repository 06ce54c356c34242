"""The durable queue: Redis Streams with a consumer group.

* Lines are stream entries (`XADD`); workers read them with `XREADGROUP` and own them until
  `XACK`. A crashed worker's pending lines are taken over with `XAUTOCLAIM` after an idle time.
* A result is stored with `HSETNX` under (batch id, custom_id), its counters bumped and the
  entry acknowledged in ONE Lua script: nothing is acknowledged before its result is stored,
  and a line delivered twice is counted once (idempotent results).
* A line out of attempts moves to the dead-letter stream (and its error to the error file).
* Acknowledged entries are deleted (`XDEL`), so the stream holds only outstanding lines; a
  terminal batch's record and results expire after a retention period.
* Lines inside a provider batch job stay pending; `inflight` maps them to the job so a reclaim
  leaves them to whoever polls that job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError, WatchError

from .model import WINDOW_SECONDS, BatchRecord, Keys, Line, RequestCounts, Result, can_move

log = logging.getLogger(__name__)
CHUNK = 1000  # lines per enqueue round trip (and the most enqueued in one transaction)

Entry = tuple[str, Line]


# A batch's index entry is dropped this long after its creation (its record is kept 30 days
# after it ends, and it ends within its 24 h window).
INDEX_DAYS = 35


@dataclass(frozen=True)
class PendingDelete:
    """A provider file still to be deleted: recorded `since`, tried `tries` times, next try
    not before `next_at` (epoch seconds)."""

    file_id: str
    provider: str
    since: float
    tries: int
    next_at: float

    def dump(self) -> bytes:
        return orjson.dumps(
            {"p": self.provider, "s": self.since, "n": self.tries, "a": self.next_at}
        )

    @classmethod
    def load(cls, file_id: str, raw: bytes | str) -> PendingDelete:
        text = _text(raw)
        if not text.startswith("{"):  # recorded as the bare provider name
            return cls(file_id, text, time.time(), 0, 0.0)
        data = orjson.loads(text)
        return cls(
            file_id,
            str(data["p"]),
            float(data["s"]),
            int(data.get("n", 0)),
            float(data.get("a", 0)),
        )


INTENT_PREFIX = "intent:"


def _new_deletes(provider: str, file_ids: Sequence[str]) -> dict[str, bytes]:
    """`provider_files` entries of files to delete, not tried yet."""
    return dict.fromkeys(file_ids, PendingDelete("", provider, time.time(), 0, 0.0).dump())


def intent_job(marker: str) -> str:
    """The job name an intent's lines are kept under until it is adopted."""
    return INTENT_PREFIX + marker


# An intent (KEYS[1] field ARGV[1], its lines at KEYS[2]) becomes job ARGV[2] (metadata
# ARGV[3], lines moved to KEYS[3], listed in the jobs hash KEYS[4]); its entries (ARGV[4..])
# map to the job in `inflight` (KEYS[5]): 1. When the intent is gone: 2 if that job is recorded
# (another worker adopted it), else 0 (given up: its lines are retried).
_ADOPT = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  if redis.call('HEXISTS', KEYS[4], ARGV[2]) == 1 then return 2 end
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[3]) end
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
for i = 4, #ARGV do redis.call('HSET', KEYS[5], ARGV[i], ARGV[2]) end
return 1
"""


_COMPLETE = """
local added = redis.call('HSETNX', KEYS[1], ARGV[3], ARGV[4])
if added == 1 then
  if ARGV[5] == '1' then
    redis.call('HINCRBY', KEYS[2], 'completed', 1)
  else
    redis.call('HINCRBY', KEYS[2], 'failed', 1)
  end
  redis.call('HINCRBY', KEYS[2], 'prompt_tokens', ARGV[9])
  redis.call('HINCRBY', KEYS[2], 'completion_tokens', ARGV[10])
  redis.call('HINCRBYFLOAT', KEYS[2], 'cost_usd', ARGV[11])
  redis.call('HINCRBYFLOAT', KEYS[2], 'saved_usd', ARGV[12])
  if ARGV[13] == '1' then
    redis.call('XADD', KEYS[5], '*', 'b', ARGV[14], 'c', ARGV[3], 'r', ARGV[4], 'l', ARGV[15])
  end
  if ARGV[17] == '1' then
    redis.call('XADD', KEYS[4], '*', 't', ARGV[6], 'r', ARGV[7],
      'm', ARGV[8], 'p', ARGV[9], 'c', ARGV[10], 'u', ARGV[11], 's', ARGV[12], 'ok', ARGV[5],
      'lv', ARGV[16])
  end
end
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[3], ARGV[2])
  redis.call('HDEL', KEYS[6], ARGV[2])
end
local c = redis.call('HMGET', KEYS[2], 'completed', 'failed')
return (tonumber(c[1]) or 0) + (tonumber(c[2]) or 0)
"""


# The next attempt of a line, only if its current entry is still pending (acknowledged here):
# a replayed poll or a second worker must not queue the same attempt twice.
# Refresh the idle time of the entries (ARGV[2..]) that consumer ARGV[1] still holds (XCLAIM
# with JUSTID counts no delivery); an entry another consumer has claimed meanwhile is left to
# it. Returns how many were refreshed.
_TOUCH = """
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], KEYS[2], id, id, 1, ARGV[1])
  if p[1] then
    redis.call('XCLAIM', KEYS[1], KEYS[2], ARGV[1], 0, id, 'JUSTID')
    n = n + 1
  end
end
return n
"""
TOUCH_CHUNK = 500  # entries per touch script (one short hold of Redis each)

_RESUBMIT = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(entries: Sequence[Any]) -> list[Entry]:
    out: list[Entry] = []
    for entry_id, fields in entries:
        if fields is None:  # deleted entry
            continue
        eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        out.append((eid, Line.from_fields(fields)))
    return out


class RedisQueue:
    """Batches, lines and results of one `BatchQueue` in Redis."""

    def __init__(self, redis: Redis, name: str, *, max_attempts: int, dead_letter: bool) -> None:
        # redis-py's return types are unions of bytes/str/awaitables; results are decoded here
        self.redis: Any = redis
        self.keys = Keys(name)
        self.max_attempts = max_attempts
        self.dead_letter_enabled = dead_letter
        self._complete = redis.register_script(_COMPLETE)
        self._adopt = redis.register_script(_ADOPT)
        self._resubmit = redis.register_script(_RESUBMIT)
        self._touch = redis.register_script(_TOUCH)

    @classmethod
    def from_url(
        cls, url: str, name: str, *, max_attempts: int, dead_letter: bool, password: str | None
    ) -> RedisQueue:
        client = Redis.from_url(url, password=password, socket_timeout=30)
        return cls(client, name, max_attempts=max_attempts, dead_letter=dead_letter)

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def durable(self) -> bool | None:
        """Whether this Redis keeps its data across a restart (append-only file or snapshots);
        None when it cannot be told (managed Redis services often disable `CONFIG`)."""
        try:
            found = await asyncio.wait_for(self.redis.config_get("appendonly", "save"), 2.0)
        except Exception:
            return None
        aof = found.get("appendonly", found.get(b"appendonly", b""))
        save = found.get("save", found.get(b"save", b""))
        aof, save = (v.decode() if isinstance(v, bytes) else str(v) for v in (aof, save))
        return aof == "yes" or bool(save.strip())

    async def ensure_groups(self) -> None:
        for stream, group in (
            (self.keys.stream, self.keys.group),
            (self.keys.ledger, self.keys.ledger_group),
        ):
            try:
                await self.redis.xgroup_create(stream, group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # -- batches ----------------------------------------------------------------------------

    async def create(self, record: BatchRecord, lines: Sequence[Line]) -> BatchRecord:
        """Store the record and enqueue every line. Up to `CHUNK` lines this is one
        transaction (the batch starts in_progress). A larger batch is stored `validating` and
        active first, then its lines go in chunks and it moves to in_progress: if that is cut
        short, the sweeper fails the batch once it has been validating too long."""
        k = self.keys
        record.request_counts = RequestCounts(total=len(lines))
        await self.ensure_groups()
        now = int(time.time())
        expires = now + WINDOW_SECONDS.get(record.completion_window, 86400)
        small = len(lines) <= CHUNK
        if small:
            record = record.model_copy(
                update={"status": "in_progress", "in_progress_at": now, "expires_at": expires}
            )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(k.batch(record.id), record.store())
            if not record.deferred:
                index = k.tenant_index(record.tenant)
                pipe.zadd(index, {record.id: record.created_at})
                # (entries whose record has surely expired: a tenant that never lists)
                pipe.zremrangebyscore(index, "-inf", now - INDEX_DAYS * 86400)
            pipe.hset(k.counts(record.id), mapping={"completed": 0, "failed": 0})
            pipe.sadd(k.active, record.id)
            if small:
                for line in lines:
                    pipe.xadd(k.stream, line.fields())
            await pipe.execute()
        if small:
            return record
        for start in range(0, len(lines), CHUNK):
            async with self.redis.pipeline(transaction=False) as pipe:
                for line in lines[start : start + CHUNK]:
                    pipe.xadd(k.stream, line.fields())
                await pipe.execute()
        # Every line is queued, whatever the status can move to now (a cancel that came
        # meanwhile refuses in_progress): the sweeper must not take it for a cut-short create.
        await self.redis.hset(k.counts(record.id), "queued", "1")
        moved = await self.transition(
            record.id, "in_progress", in_progress_at=now, expires_at=expires
        )
        return moved or await self.get(record.id) or record

    async def fully_queued(self, batch_id: str) -> bool:
        """Whether every line of a large batch was queued (`create` finished enqueueing)."""
        return bool(await self.redis.hget(self.keys.counts(batch_id), "queued"))

    async def get(self, batch_id: str) -> BatchRecord | None:
        return (await self._records([batch_id]))[0]

    async def list_batches(
        self, tenant: str, after: str | None, limit: int
    ) -> tuple[list[BatchRecord], bool]:
        """The tenant's batches, newest first, after the batch `after` (a cursor; another
        tenant's batch id, or an unknown one, reads as no cursor)."""
        await self._move_shared_index()
        index = self.keys.tenant_index(tenant)
        start = 0
        if after:
            rank = await self.redis.zrevrank(index, after)
            start = rank + 1 if rank is not None else 0
        out: list[BatchRecord] = []
        expired: list[str] = []
        while len(out) <= limit:
            page = [m.decode() for m in await self.redis.zrevrange(index, start, start + limit)]
            if not page:
                break
            start += len(page)
            for batch_id, record in zip(page, await self._records(page), strict=True):
                if record is None:
                    expired.append(batch_id)
                elif record.tenant == tenant:
                    out.append(record)
        if expired:  # (after the walk: removed during it, they shifted the ranks it reads)
            await self.redis.zrem(index, *expired)
        return out[:limit], len(out) > limit

    async def _records(self, batch_ids: Sequence[str]) -> list[BatchRecord | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in batch_ids:
                pipe.get(self.keys.batch(batch_id))
                pipe.hmget(self.keys.counts(batch_id), ["completed", "failed"])
            raw = await pipe.execute()
        out: list[BatchRecord | None] = []
        for stored, counts in zip(raw[::2], raw[1::2], strict=True):
            if stored is None:
                out.append(None)
                continue
            record = BatchRecord.load(stored)
            record.request_counts = RequestCounts(
                total=record.request_counts.total,
                completed=int(counts[0] or 0),
                failed=int(counts[1] or 0),
            )
            out.append(record)
        return out

    async def _move_shared_index(self) -> None:
        """Move the batches of the index every tenant shared (gateways before 2026-12-08
        wrote only that one, and a list read every tenant's records to find its own) into
        the per-tenant indexes. Empty after the first list call, one `ZRANGE` from then on;
        idempotent, so gateways doing it at once agree."""
        k = self.keys
        while page := await self.redis.zrange(k.index, 0, 499, withscores=True):
            ids = [m.decode() for m, _ in page]
            records = await self._records(ids)
            async with self.redis.pipeline(transaction=False) as pipe:
                for (member, score), record in zip(page, records, strict=True):
                    if record is not None:
                        pipe.zadd(k.tenant_index(record.tenant), {member: score})
                pipe.zrem(k.index, *ids)
                await pipe.execute()

    async def transition(self, batch_id: str, to: str, **fields: Any) -> BatchRecord | None:
        """Move a batch to status `to` if allowed from its current status (optimistic lock);
        None when the batch is missing or the move is not allowed."""
        key = self.keys.batch(batch_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        return None
                    record = BatchRecord.load(raw)
                    if not can_move(record.status, to):
                        return None
                    record = record.model_copy(update={"status": to, **fields})
                    pipe.multi()
                    pipe.set(key, record.store())
                    await pipe.execute()
                    return record
                except WatchError:
                    continue

    async def results(self, batch_id: str) -> dict[str, Result]:
        raw = await self.redis.hgetall(self.keys.results(batch_id))
        return {k.decode(): Result.load(k.decode(), v) for k, v in raw.items()}

    async def result(self, batch_id: str, custom_id: str) -> Result | None:
        raw = await self.redis.hget(self.keys.results(batch_id), custom_id)
        return Result.load(custom_id, raw) if raw is not None else None

    async def active(self) -> list[str]:
        members = await self.redis.smembers(self.keys.active)
        return sorted(m.decode() for m in members)

    async def deactivate(self, batch_id: str, retain_seconds: int = 30 * 86400) -> None:
        """A terminal batch: no longer swept; its record and results expire after
        `retain_seconds` (the output and error files stay in the file store)."""
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(k.active, batch_id)
            for key in (k.batch(batch_id), k.results(batch_id), k.counts(batch_id)):
                pipe.expire(key, retain_seconds)
            await pipe.execute()

    # -- lines ------------------------------------------------------------------------------

    async def read(
        self, consumer: str, count: int, block_ms: int, own: bool = False
    ) -> list[Entry]:
        """New lines for `consumer` (or, with `own`, the ones it already holds: a restart)."""
        got = await self.redis.xreadgroup(
            self.keys.group,
            consumer,
            {self.keys.stream: "0" if own else ">"},
            count=count,
            block=None if own else block_ms,
        )
        return _decode(got[0][1]) if got else []

    async def read_own(self, consumer: str) -> list[Entry]:
        """The lines `consumer` already holds (its previous run's, under the same name: a
        restarted pod) that are not waiting inside a live provider job, each read counted as
        a delivery; those delivered too often (they keep killing the worker) are
        dead-lettered, not run again. Lines inside a live job are left to its poll, however
        often the worker restarted meanwhile (each restart counts a delivery for them too)."""
        own = await self.outside_jobs(await self.read(consumer, 100_000, 0, own=True))
        delivered: dict[str, int] = {}
        async for page in self._pending(1000, consumername=consumer):
            delivered.update(page)
        return await self._unpoisoned(own, delivered)

    async def _pending(self, count: int, **only: Any) -> AsyncIterator[list[tuple[str, int]]]:
        """The group's pending entries, `count` a page, as (entry id, times delivered), listed
        with `XPENDING` (no delivery counted); `only`: its `consumername` / `idle` filters."""
        start = "-"
        while True:
            page = await self.redis.xpending_range(
                self.keys.stream, self.keys.group, min=start, max="+", count=count, **only
            )
            if not page:
                return
            rows = [(_text(p["message_id"]), int(p["times_delivered"])) for p in page]
            yield rows
            start = "(" + rows[-1][0]

    async def touch(self, consumer: str, entry_ids: Iterable[str]) -> int:
        """Mark the entries `consumer` still holds as just delivered, so that no reclaim takes
        over a line a live worker is running or holding (nor counts a delivery for it)."""
        ids = list(entry_ids)
        k = self.keys
        touched = 0
        for i in range(0, len(ids), TOUCH_CHUNK):
            args = [consumer, *ids[i : i + TOUCH_CHUNK]]
            touched += int(await self._touch(keys=[k.stream, k.group], args=args))
        return touched

    async def _unpoisoned(self, entries: list[Entry], delivered: dict[str, int]) -> list[Entry]:
        """`entries` less those delivered more than max_attempts + 2 times, dead-lettered."""
        fresh: list[Entry] = []
        for eid, line in entries:
            if delivered.get(eid, 0) > self.max_attempts + 2:
                log.warning("line redelivered %d times: dead-lettered", delivered[eid])
                await self.dead_letter(
                    eid, line, "poison_line", "the line crashed workers repeatedly"
                )
            else:
                fresh.append((eid, line))
        return fresh

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int = 500) -> list[Entry]:
        """Take over lines idle longer than `min_idle_ms` (a crashed worker's), except lines
        waiting inside a provider job. Lines delivered too often are dead-lettered here.

        Not `XAUTOCLAIM`: it claims every idle entry, those inside a live provider job too, and
        each claim counts as a delivery, so a line waiting in a job for a while looked like a
        line that crashed workers (and was dead-lettered as such, its paid answer discarded).
        The idle entries are listed (`XPENDING`, no delivery counted), those in live jobs left
        alone, and only the others claimed (`XCLAIM`)."""
        k = self.keys
        out: list[Entry] = []
        delivered: dict[str, int] = {}  # deliveries once claimed: the listing's count, plus one
        async for page in self._pending(count, idle=min_idle_ms):
            delivered.update((eid, times + 1) for eid, times in page)
            free = (await self._outside_jobs([eid for eid, _ in page]))[: count - len(out)]
            if free:  # (at most `count` in all)
                claimed = await self.redis.xclaim(k.stream, k.group, consumer, min_idle_ms, free)
                out += _decode(claimed)
            if len(out) >= count:
                break
        return await self._unpoisoned(out, delivered)

    async def claim_idle(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> AsyncIterator[list[Any]]:
        """Take over, page by page (`XAUTOCLAIM`, up to `count` a page), the entries of
        `stream` pending in `group` longer than `min_idle_ms`: raw (id, fields) pairs."""
        cursor = "0-0"
        while True:
            reply = await self.redis.xautoclaim(
                stream, group, consumer, min_idle_ms, start_id=cursor, count=count
            )
            cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            if reply[1]:
                yield reply[1]
            if cursor == "0-0":
                return

    async def outside_jobs(self, entries: list[Entry]) -> list[Entry]:
        """The entries not waiting inside a provider job: never put in one, or put in a job
        that was dropped since (its lines handed to direct retries by a worker that died
        before they finished: nobody else would ever run them)."""
        free = set(await self._outside_jobs([e for e, _ in entries]))
        return [e for e in entries if e[0] in free]

    async def _outside_jobs(self, entry_ids: list[str]) -> list[str]:
        if not entry_ids:
            return []
        k = self.keys
        jobs = await self.redis.hmget(k.inflight, entry_ids)
        named = sorted({j for j in jobs if j is not None})
        found = await self.redis.hmget(k.jobs, named) if named else []
        live = {j for j, job in zip(named, found, strict=True) if job is not None}
        about = [j for j in named if j.startswith(INTENT_PREFIX.encode())]  # (bytes)
        markers = [j[len(INTENT_PREFIX) :] for j in about]
        intents = await self.redis.hmget(k.intents, markers) if markers else []
        live |= {j for j, intent in zip(about, intents, strict=True) if intent is not None}
        return [e for e, job in zip(entry_ids, jobs, strict=True) if job is None or job not in live]

    async def complete(
        self, entry_id: str, line: Line, result: Result, *, dead: bool = False
    ) -> int:
        """Store `result` (first one wins), count it, acknowledge the entry; returns how many
        lines of the batch have a result."""
        k = self.keys
        done = await self._complete(
            keys=[
                k.results(line.batch_id),
                k.counts(line.batch_id),
                k.stream,
                k.ledger,
                k.dead,
                k.inflight,
            ],
            args=[
                k.group,
                entry_id,
                line.custom_id,
                result.dump(),
                "1" if result.ok else "0",
                line.tenant,
                line.route,
                result.model or line.route,
                result.prompt_tokens,
                result.completion_tokens,
                repr(result.cost_usd),
                repr(result.saved_usd),
                "1" if dead and self.dead_letter_enabled else "0",
                line.batch_id,
                orjson.dumps({**line.body}) if dead else b"",
                result.lever,
                "0" if result.unrun else "1",  # a ledger line: it was a request
            ],
        )
        return int(done)

    async def resubmit(
        self,
        entry_id: str,
        line: Line,
        direct: bool | None = None,
        *,
        not_before: float | None = None,
        count: bool = True,
    ) -> bool:
        """Queue the line's next attempt (run directly when `direct`; not before `not_before`;
        the same attempt again unless `count`) and acknowledge the old entry, atomically, and
        only while the old entry is pending: False when it was acknowledged already (by a
        replayed poll, say), and nothing is queued."""
        k = self.keys
        again = line.retried(direct, not_before=not_before, count=count)
        fields = [v for pair in again.fields().items() for v in pair]
        queued = await self._resubmit(
            keys=[k.stream, k.inflight], args=[k.group, entry_id, *fields]
        )
        return bool(queued)

    async def dead_letter(self, entry_id: str, line: Line, code: str, message: str) -> int:
        result = Result(line.custom_id, None, None, code, message)
        return await self.complete(entry_id, line, result, dead=True)

    async def fail_or_retry(
        self,
        entry_id: str,
        line: Line,
        result: Result,
        retryable: bool,
        *,
        not_before: float | None = None,
        count: bool = True,
    ) -> int | None:
        """A failed attempt: resubmit (not before `not_before`) while attempts remain, or
        always when the failure does not `count` as an attempt, else store the failure (and
        dead-letter it when it was retryable). Returns the done count when stored."""
        if retryable and (not count or line.attempt < self.max_attempts):
            await self.resubmit(entry_id, line, not_before=not_before, count=count)
            return None
        return await self.complete(entry_id, line, result, dead=retryable)

    async def dead_letters(self, count: int = 1000) -> list[dict[str, str]]:
        entries = await self.redis.xrange(self.keys.dead, count=count)
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]

    # -- provider jobs ----------------------------------------------------------------------

    async def save_job(self, job_id: str, job: dict[str, Any], entry_ids: Sequence[str]) -> None:
        """Record a provider job: its metadata in the jobs hash (what every poll pass reads)
        and, when `job` has them, its lines (`{entry id: line}`, in input order) apart, read
        only when the job ends or is given up."""
        meta = {k: v for k, v in job.items() if k != "lines"}
        async with self.redis.pipeline(transaction=True) as pipe:
            if "lines" in job:
                pipe.set(self.keys.job_lines(job_id), orjson.dumps(list(job["lines"].items())))
            pipe.hset(self.keys.jobs, job_id, orjson.dumps(meta))
            if entry_ids:
                pipe.hset(self.keys.inflight, mapping=dict.fromkeys(entry_ids, job_id))
            await pipe.execute()

    async def save_intent(self, marker: str, job: dict[str, Any], entry_ids: Sequence[str]) -> None:
        """Record a job about to be created at the provider under `marker` (the one-off tag
        its metadata carries), before the call: a worker that dies between the provider making
        the job and `adopt_intent` recording it left a billed job that nobody polled, while its
        lines were reclaimed and sent again (billed twice). Another worker adopts a lapsed
        intent (`Worker._adopt`). Its lines are kept as a job's (`inflight`: no reclaim)."""
        meta = {k: v for k, v in job.items() if k != "lines"}
        name = intent_job(marker)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.intent_lines(marker), orjson.dumps(list(job["lines"].items())))
            pipe.hset(self.keys.intents, marker, orjson.dumps(meta))
            if entry_ids:
                pipe.hset(self.keys.inflight, mapping=dict.fromkeys(entry_ids, name))
            await pipe.execute()

    async def intents(self) -> dict[str, dict[str, Any]]:
        """The jobs about to be created, by marker."""
        raw = await self.redis.hgetall(self.keys.intents)
        return {_text(k): orjson.loads(v) for k, v in raw.items()}

    async def adopt_intent(
        self, marker: str, job_id: str, meta: dict[str, Any], entry_ids: Sequence[str]
    ) -> Literal["adopted", "taken", "given_up"]:
        """The intent `marker` became the provider job `job_id`: recorded as a job, with its
        lines, in one step ("adopted"). When the intent is gone: "taken" (another worker
        recorded this job) or "given_up" (its lines are being retried: the caller must not
        keep the job)."""
        k = self.keys
        keys = [k.intents, k.intent_lines(marker), k.job_lines(job_id), k.jobs, k.inflight]
        done = await self._adopt(keys=keys, args=[marker, job_id, orjson.dumps(meta), *entry_ids])
        return "adopted" if done == 1 else "taken" if done == 2 else "given_up"

    async def intent_lines(self, marker: str) -> dict[str, dict[str, Any]]:
        """An intent's lines, `{entry id: line}` in input order."""
        raw = await self.redis.get(self.keys.intent_lines(marker))
        return {} if raw is None else {str(eid): data for eid, data in orjson.loads(raw)}

    async def drop_intent(self, marker: str) -> bool:
        """Give the intent up; True for the caller that did (its lines are then the caller's
        to retry), False when it was adopted or given up already."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.intents, marker)
            pipe.delete(self.keys.intent_lines(marker))
            dropped, _ = await pipe.execute()
        return bool(dropped)

    async def jobs(self) -> dict[str, dict[str, Any]]:
        """Every provider job's metadata (not its lines: `job_lines`). A job recorded whole by
        a worker before the lines were kept apart is moved to the new form here, once."""
        raw = await self.redis.hgetall(self.keys.jobs)
        out: dict[str, dict[str, Any]] = {}
        for key, value in raw.items():
            job_id = _text(key)
            job = orjson.loads(value)
            if "lines" in job:
                job = await self._split_job(job_id, job)
            out[job_id] = job
        return out

    async def _split_job(self, job_id: str, job: dict[str, Any]) -> dict[str, Any]:
        lines: dict[str, Any] = job["lines"]
        meta = {k: v for k, v in job.items() if k != "lines"}
        meta["batches"] = sorted({str(data["b"]) for data in lines.values()})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.job_lines(job_id), orjson.dumps(list(lines.items())), nx=True)
            pipe.hset(self.keys.jobs, job_id, orjson.dumps(meta))
            await pipe.execute()
        log.info("provider job %s moved to the split form (%d lines)", job_id, len(lines))
        return meta

    async def job_lines(self, job_id: str) -> dict[str, dict[str, Any]]:
        """The job's lines, `{entry id: line}` in the job's input order."""
        raw = await self.redis.get(self.keys.job_lines(job_id))
        if raw is None:  # not split yet (an older worker's job)
            whole = await self.redis.hget(self.keys.jobs, job_id)
            job = orjson.loads(whole) if whole is not None else {}
            lines: dict[str, dict[str, Any]] = job.get("lines", {})
            return lines
        return {str(eid): data for eid, data in orjson.loads(raw)}

    async def drop_job(
        self, job_id: str, provider_files: Sequence[str] = (), provider: str = ""
    ) -> None:
        """Forget a finished job; its `provider_files` at `provider` are recorded to be
        deleted there (`file_deleted` once they are)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.jobs, job_id)
            pipe.hdel(self.keys.job_failures, job_id)
            pipe.delete(self.keys.job_lines(job_id))
            if provider_files:
                pipe.hset(self.keys.provider_files, mapping=_new_deletes(provider, provider_files))
            await pipe.execute()

    async def to_delete(self, provider: str, file_ids: Sequence[str]) -> None:
        """Record provider files to be deleted (before the first try: one that fails is
        retried by the deleter)."""
        await self.redis.hset(self.keys.provider_files, mapping=_new_deletes(provider, file_ids))

    async def pending_deletes(self) -> list[PendingDelete]:
        """Provider files still to be deleted, with their tries so far."""
        raw = await self.redis.hgetall(self.keys.provider_files)
        return [PendingDelete.load(_text(k), v) for k, v in raw.items()]

    async def files_to_delete(self) -> dict[str, list[str]]:
        """Provider files still to be deleted, by provider."""
        out: dict[str, list[str]] = {}
        for pending in await self.pending_deletes():
            out.setdefault(pending.provider, []).append(pending.file_id)
        return out

    async def delete_failed(self, pending: PendingDelete) -> None:
        """Record a failed delete's next try (only while the file is still to be deleted)."""
        key = self.keys.provider_files
        if await self.redis.hexists(key, pending.file_id):
            await self.redis.hset(key, pending.file_id, pending.dump())

    async def file_deleted(self, file_id: str) -> None:
        await self.redis.hdel(self.keys.provider_files, file_id)

    async def orphaned_job_lines(self, count: int = 1000) -> int:
        """Delete the `joblines:<job>` keys of jobs no longer recorded (an older worker's
        `drop_job` leaves them behind while old and new workers run side by side); returns
        how many. A job's lines and its record are written and removed together, so a key
        without its record is never read again."""
        pattern = self.keys.job_lines("*")
        prefix = len(self.keys.job_lines(""))
        removed = 0
        async for key in self.redis.scan_iter(match=pattern, count=count):
            job_id = _text(key)[prefix:]
            if not await self.redis.hexists(self.keys.jobs, job_id):
                # still absent when deleted: a job recorded meanwhile keeps its lines
                async with self.redis.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(self.keys.jobs)
                        if await pipe.hexists(self.keys.jobs, job_id):
                            continue
                        pipe.multi()
                        pipe.delete(key)
                        await pipe.execute()
                        removed += 1
                    except WatchError:
                        continue
        return removed

    async def job_poll_failed(self, job_id: str) -> int:
        """Count a failed poll of a provider job; returns its consecutive failures."""
        return int(await self.redis.hincrby(self.keys.job_failures, job_id, 1))

    async def job_poll_ok(self, job_id: str) -> None:
        await self.redis.hdel(self.keys.job_failures, job_id)

    async def lease(self, name: str, owner: str, ttl_ms: int) -> bool:
        """A short exclusive lease (finalizing a batch, polling a job)."""
        key = self.keys.lock(name)
        if await self.redis.set(key, owner, nx=True, px=ttl_ms):
            return True
        current = await self.redis.get(key)
        if current is not None and current.decode() == owner:
            await self.redis.pexpire(key, ttl_ms)
            return True
        return False

    @contextlib.asynccontextmanager
    async def holding(self, name: str, owner: str, ttl_ms: int) -> AsyncIterator[None]:
        """Keep lease `name` (taken with `lease`) renewed while the block runs: a short lease
        that a holder who dies lets go of within `ttl_ms`, while a long poll or finalization
        keeps it. (A 300 s job lease held by a worker killed mid-poll froze that job for five
        minutes when its replacement had another consumer name, as a rescheduled pod has.)"""

        async def renew() -> None:
            while True:
                await asyncio.sleep(ttl_ms / 3000)
                try:
                    await self.lease(name, owner, ttl_ms)
                except Exception as exc:  # Redis failing: the next renewal tries again
                    log.warning("lease %s not renewed: %s", name, type(exc).__name__)

        renewing = asyncio.get_running_loop().create_task(renew())
        try:
            yield
        finally:
            renewing.cancel()

    async def release(self, name: str, owner: str) -> None:
        key = self.keys.lock(name)
        current = await self.redis.get(key)
        if current is not None and current.decode() == owner:
            await self.redis.delete(key)
