"""The gateway side of batching, built from `GatewayConfig.batch` at start-up.

`BatchStage` is a pipeline stage (after the caches): a request with `x-thrifty-defer: true`
on a route whose policy allows deferral is queued and answered 202 with an id to poll
(`GET /v1/thrifty/deferred/{id}`); `/v1/embeddings` calls go through the coalescer. It also
owns what the Files and Batches routes use (`BatchRuntime`: file store, queue, limits) and a
task that records finished batch lines from the workers into this gateway's ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import RedisError

from thrifty_core.config import GatewayConfig
from thrifty_core.errors import ServiceUnavailableError
from thrifty_core.prices import Usage

from ..ledger import Entry, Ledger
from ..pipeline import Outcome, RequestContext, StageResponse
from .budgets import charge, find_budgets
from .coalesce import Coalescer
from .files import FilesystemStore
from .model import ENDPOINT_URLS, BatchRecord, Line, new_id
from .queue import RedisQueue

log = logging.getLogger(__name__)
STAGE_NAME = "batch"
# Ledger lines pending this long with a consumer (a gateway that stopped or died before its
# ack) are taken over; a live gateway acknowledges within milliseconds of its read.
SYNC_MIN_IDLE_MS = 60_000
SYNC_RECLAIM_SECONDS = 30.0
READ_TIMEOUT = 5.0  # seconds: bounds one ledger read (it blocks 1 s in Redis)
CHARGE_TRIES = 10  # budget store refusals before batch lines are recorded uncharged


CHECKS_AT_ONCE = 2


class BatchRuntime:
    """File store, queue and limits of the gateway's batch queue."""

    def __init__(self, config: GatewayConfig, queue: RedisQueue | None) -> None:
        assert config.batch is not None
        self.config = config.batch
        self.spec = config.batch.spec
        root = config.batch.files_dir or tempfile.mkdtemp(prefix="thrifty-files-")
        self.store = FilesystemStore(root, self.spec.file_store.max_total_bytes)
        self.queue = queue
        self.routes = frozenset(r.name for r in config.routes)
        self.gateway = config.ledger.gateway  # whose lines these are (names charged ids)
        # A batch line is one request: no longer than a request may be.
        self.max_line_bytes = config.server.max_request_bytes
        # Input files checked at once (uploads and batch creations): each parse holds its
        # file's lines in memory, so many large ones at once would exhaust the pod's.
        self.checks = asyncio.Semaphore(CHECKS_AT_ONCE)


# The gateway's queue client waits this long for a connection and this long for each answer
# (a ledger read blocks 1 s in Redis), tried once more after a failure: a request deferred while
# the queue's Redis is down or unreachable gets a quick 503, not a request held for minutes.
GATEWAY_CONNECT_TIMEOUT = 1.0
GATEWAY_SOCKET_TIMEOUT = 5.0
GATEWAY_RETRIES = 1
RETRY_AFTER_SECONDS = 5  # what a refused deferral tells its client


def open_queue(config: GatewayConfig, *, gateway: bool = False) -> RedisQueue | None:
    """The batch queue of `config`, None without one. `gateway`: with the gateway's short
    timeouts (above); the worker keeps the queue's own (it waits on Redis, nobody waits on it)."""
    batch = config.batch
    if batch is None or not batch.redis_url:
        return None
    password = batch.redis_password.read_store_credential() if batch.redis_password else None
    if not gateway:
        return RedisQueue.from_url(
            batch.redis_url,
            batch.name,
            max_attempts=batch.spec.retries.max_attempts,
            dead_letter=batch.spec.dead_letter,
            password=password,
        )
    client = Redis.from_url(
        batch.redis_url,
        password=password,
        socket_timeout=GATEWAY_SOCKET_TIMEOUT,
        socket_connect_timeout=GATEWAY_CONNECT_TIMEOUT,
        retry=Retry(EqualJitterBackoff(cap=0.5, base=0.05), GATEWAY_RETRIES),
    )
    return RedisQueue(
        client,
        batch.name,
        max_attempts=batch.spec.retries.max_attempts,
        dead_letter=batch.spec.dead_letter,
    )


@contextlib.contextmanager
def queue_answers() -> Iterator[None]:
    """The queue's Redis failing (down, unreachable, too slow) as a retryable 503."""
    try:
        yield
    except (RedisError, TimeoutError) as exc:
        log.warning("batch queue unavailable: %s", type(exc).__name__)
        raise ServiceUnavailableError(
            "The batch queue is unavailable right now; retry later (or send the request "
            "without x-thrifty-defer).",
            code="batch_queue_unavailable",
            headers={"retry-after": str(RETRY_AFTER_SECONDS)},
        ) from exc


# Request headers that direct the cache: a deferred request carrying any of them is kept out of
# the batch line cache, which would not honour them.
CACHE_HEADERS = (
    "cache-control",
    "pragma",
    "x-thrifty-cache",
    "x-thrifty-cache-tags",
    "x-thrifty-cache-threshold",
)


class BatchStage:
    name = STAGE_NAME

    def __init__(
        self,
        runtime: BatchRuntime,
        coalescer: Coalescer | None,
        ledger: Ledger,
        routes: Any,
        stages: Sequence[Any] = (),
    ) -> None:
        self.runtime = runtime
        self.coalescer = coalescer
        self.ledger = ledger
        self.routes = routes
        self.stages = stages  # the gateway's stages (the budgets stage charges batch spend)
        self._sync: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._charge_failures: dict[bytes, int] = {}  # ledger line -> spend refusals

    def start(self) -> None:
        if self.runtime.queue is not None:
            self._sync = asyncio.get_running_loop().create_task(self._ledger_sync())

    async def before_upstream(self, ctx: RequestContext) -> StageResponse | None:
        if ctx.defer:
            if ctx.route.deferrable and self.runtime.queue is not None and not ctx.stream:
                return await self._defer(ctx)
            ctx.response_headers["x-thrifty-deferred"] = "refused"
        if ctx.endpoint == "embeddings" and self.coalescer is not None:
            route = self.routes.get(ctx.route.name)
            if route is not None:
                return await self.coalescer.embed(ctx, route)
        return None

    async def after_upstream(self, ctx: RequestContext, outcome: Outcome) -> None:
        del ctx, outcome

    async def _defer(self, ctx: RequestContext) -> StageResponse:
        queue = self.runtime.queue
        assert queue is not None
        record = BatchRecord(
            id=new_id("batch"),
            endpoint=ENDPOINT_URLS[ctx.endpoint],
            tenant=ctx.tenant_name,
            deferred=True,
        )
        line = Line(
            record.id,
            "deferred",
            ctx.endpoint,
            ctx.body,
            ctx.tenant_name,
            cache=not any(ctx.headers.get(h) for h in CACHE_HEADERS),
        )
        with queue_answers():
            record = await queue.create(record, [line])
        poll_url = f"/v1/thrifty/deferred/{record.id}"
        body = {
            "id": record.id,
            "object": "thrifty.deferred",
            "status": record.status,
            "created_at": record.created_at,
            "poll_url": poll_url,
        }
        return StageResponse(
            lever=None,
            body=body,
            status=202,
            served_by="batch:queue",
            booked_later=True,  # its line is recorded when it finishes
            headers={"location": poll_url, "x-thrifty-deferred-id": record.id},
        )

    async def _ledger_sync(self) -> None:
        """Record finished batch lines (written by the workers) into this gateway's ledger.

        Every gateway reads the ledger stream in one consumer group: each line is recorded by
        one of them (written to the shared ledger, when there is one), then acknowledged. A
        line handed to a gateway that stopped or died before acknowledging it stays in that
        consumer's pending list; every `SYNC_RECLAIM_SECONDS`
        this gateway takes over pending lines idle longer than `SYNC_MIN_IDLE_MS` (its own
        predecessor's too: the consumer name is the pod's), and drops consumers left with
        nothing pending. A line recorded by a gateway that died before its ack is recorded
        again (at least once, as the shared ledger's writes)."""
        queue = self.runtime.queue
        assert queue is not None
        consumer = f"gateway-{socket.gethostname()}-{os.getpid()}"
        keys = queue.keys
        next_reclaim = 0.0
        stopping = self._stopping
        while not stopping.is_set():
            try:
                await queue.ensure_groups()
                while not stopping.is_set():
                    if time.monotonic() >= next_reclaim:
                        next_reclaim = time.monotonic() + SYNC_RECLAIM_SECONDS
                        await self._reclaim_ledger(consumer)
                    got = await asyncio.wait_for(
                        queue.redis.xreadgroup(
                            keys.ledger_group, consumer, {keys.ledger: ">"}, count=1000, block=1000
                        ),
                        READ_TIMEOUT,
                    )
                    if got:
                        # Shielded: a shutdown must not stop a chunk between recording it and
                        # acknowledging it (it would be recorded again by whoever reclaims it).
                        await asyncio.shield(self._settle(got[0][1]))
            except asyncio.CancelledError:
                raise
            except (RedisError, TimeoutError) as exc:  # down: said once a second, no trace
                log.warning("batch ledger sync: queue unavailable (%s); retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), 1.0)
            except Exception:
                log.exception("batch ledger sync failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), 1.0)

    async def _reclaim_ledger(self, consumer: str) -> None:
        """Settle the lines pending too long with any consumer (this one included), then drop
        the consumers that hold nothing."""
        queue = self.runtime.queue
        assert queue is not None
        keys, redis = queue.keys, queue.redis
        async for page in queue.claim_idle(
            keys.ledger, keys.ledger_group, consumer, SYNC_MIN_IDLE_MS, 1000
        ):
            await asyncio.shield(self._settle(page))
        for info in await redis.xinfo_consumers(keys.ledger, keys.ledger_group):
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if name != consumer and int(info["pending"]) == 0:
                # (A live gateway dropped here is recreated by its next read.)
                await redis.xgroup_delconsumer(keys.ledger, keys.ledger_group, name)

    async def _settle(self, entries: Sequence[tuple[bytes, dict[bytes, bytes] | None]]) -> None:
        """Record `entries` in the ledger, charge their spend to the budgets, acknowledge;
        per tenant, route and hour (budget periods start on the hour). Lines whose spend the
        budget store refuses stay pending and come back with the next reclaim; after
        `CHARGE_TRIES` refusals they are recorded and acknowledged uncharged (logged), so a
        budget store that stays down does not hold the ledger back for good."""
        queue = self.runtime.queue
        assert queue is not None
        keys, redis = queue.keys, queue.redis
        budgets = find_budgets(self.stages)
        gone: list[bytes] = []  # trimmed from the stream meanwhile: nothing left to record
        groups: dict[tuple[str, str, int], list[tuple[bytes, dict[str, str]]]] = {}
        for entry_id, fields in entries:
            if not fields:
                gone.append(entry_id)
                continue
            f = {k.decode(): v.decode() for k, v in fields.items()}
            hour = int(entry_id.split(b"-")[0]) // 3_600_000
            groups.setdefault((f.get("t", "anonymous"), f.get("r", ""), hour), []).append(
                (entry_id, f)
            )
        if gone:
            await redis.xack(keys.ledger, keys.ledger_group, *gone)
        for (tenant, route, hour), lines in groups.items():
            ids = [entry_id for entry_id, _ in lines]
            spend = [(entry_id.decode(), float(f.get("u", "0") or 0)) for entry_id, f in lines]
            try:
                # the gateway, the queue's ledger stream and the hour: whose ids these are
                bucket = f"{self.runtime.gateway}|{keys.ledger}:{hour}"
                await charge(budgets, tenant, route, spend, hour * 3600.0, bucket)
            except Exception as exc:
                tries = 1 + max(self._charge_failures.get(i, 0) for i in ids)
                if tries < CHARGE_TRIES:
                    self._charge_failures.update(dict.fromkeys(ids, tries))
                    log.warning(
                        "batch spend not charged (%s); %d lines kept for a retry",
                        type(exc).__name__,
                        len(ids),
                    )
                    continue
                log.error(
                    "batch spend of %d lines not charged after %d tries; recorded uncharged",
                    len(ids),
                    tries,
                )
            shared = self.ledger.shared
            marks = [f"{keys.ledger}:{entry_id.decode()}" for entry_id in ids]
            done: set[str] = set()
            if shared is not None and not shared.failing:
                try:  # lines a gateway recorded, then died before acknowledging (a reclaim)
                    done = await shared.recorded(marks)
                except Exception as exc:
                    log.warning("batch ledger marks unread (%s)", type(exc).__name__)
            for mark, (_, f) in zip(marks, lines, strict=True):
                if mark not in done:
                    self._record(f)
            if shared is not None and not shared.failing:
                # Written to the shared ledger before the lines are acknowledged: its writer
                # would otherwise send them a moment later, and a gateway dying in between
                # lost them. While Redis fails they wait in memory for its retries (acked all
                # the same: left pending, they would be recorded, and counted, twice). The
                # lines' marks go with them: a gateway that dies before the acknowledgement
                # leaves them to be taken over and skipped, not counted twice.
                await shared.flush([m for m in marks if m not in done])
            await redis.xack(keys.ledger, keys.ledger_group, *ids)
            # Deleted once recorded: the stream holds only lines not recorded yet (it is never
            # trimmed by length, which dropped lines no gateway had read).
            await redis.xdel(keys.ledger, *ids)
            for entry_id in ids:
                self._charge_failures.pop(entry_id, None)

    def _record(self, f: dict[str, str]) -> None:
        saved = float(f.get("s", "0") or 0)
        lever = f.get("lv") or "batch"
        self.ledger.record(
            Entry(
                tenant=f.get("t", "anonymous"),
                route=f.get("r", ""),
                model=f.get("m", ""),
                usage=Usage(int(f.get("p", "0")), int(f.get("c", "0"))),
                cost_usd=float(f.get("u", "0") or 0),
                savings={lever: saved} if saved > 0 else {},
                lever=lever,
                error=f.get("ok") != "1",
            )
        )

    async def aclose(self) -> None:
        if self._sync is not None:
            # Asked to stop between two reads (within a read's block, 1 s), not cancelled:
            # redis-py can leave a read cancelled while it connects waiting for ever (a
            # gateway stopped right after its start hung at shutdown). Cancelled only when it
            # does not stop in time, and never waited for without a bound.
            self._stopping.set()
            done, _ = await asyncio.wait({self._sync}, timeout=READ_TIMEOUT)
            if not done:
                self._sync.cancel()
                done, _ = await asyncio.wait({self._sync}, timeout=2.0)
                if not done:
                    log.warning("batch ledger sync did not stop; abandoned")
        if self.coalescer is not None:
            await self.coalescer.aclose()
        if self.runtime.queue is not None:
            await self.runtime.queue.aclose()


async def batch_stage(config: GatewayConfig, resources: Any) -> BatchStage | None:
    """The stage factory: None when the config has no batch section."""
    if config.batch is None:
        return None
    # The consumer groups are made by the ledger sync (retried while Redis is down) and by
    # every batch create: a queue's Redis that is down at start fails deferrals (503), not the
    # gateway's start (chat and cache traffic do not need it).
    queue = open_queue(config, gateway=True)
    runtime = BatchRuntime(config, queue)
    coalescer = None
    if config.batch.coalesce_window_ms > 0:
        coalescer = Coalescer(
            resources.upstream,
            resources.catalog,
            window_ms=config.batch.coalesce_window_ms,
            max_inputs=config.batch.coalesce_max_inputs,
        )
    stage = BatchStage(
        runtime, coalescer, resources.ledger, resources.routes, getattr(resources, "stages", ())
    )
    stage.start()
    return stage


def find_stage(stages: list[Any]) -> BatchStage | None:
    return next((s for s in stages if isinstance(s, BatchStage)), None)
