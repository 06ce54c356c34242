"""The gateway side of batching, built from `GatewayConfig.batch` at start-up.

`BatchStage` is a pipeline stage (after the caches): a request with `x-thrifty-defer: true`
on a route whose policy allows deferral is queued and answered 202 with an id to poll
(`GET /v1/thrifty/deferred/{id}`); `/v1/embeddings` calls go through the coalescer. It also
owns what the Files and Batches routes use (`BatchRuntime`: file store, queue, limits) and a
task that records finished batch lines from the workers into this gateway's ledger.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

from thrifty_core.config import GatewayConfig
from thrifty_core.prices import Usage

from ..ledger import Entry, Ledger
from ..pipeline import Outcome, RequestContext, StageResponse
from .budgets import charge, find_budgets
from .coalesce import Coalescer
from .files import FilesystemStore
from .model import ENDPOINT_URLS, BatchRecord, Line, new_id
from .queue import RedisQueue

log = logging.getLogger(__name__)
DEFER_HEADER = "x-thrifty-defer"
STAGE_NAME = "batch"


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


def open_queue(config: GatewayConfig) -> RedisQueue | None:
    batch = config.batch
    if batch is None or not batch.redis_url:
        return None
    password = batch.redis_password.read_store_credential() if batch.redis_password else None
    return RedisQueue.from_url(
        batch.redis_url,
        batch.name,
        max_attempts=batch.spec.retries.max_attempts,
        dead_letter=batch.spec.dead_letter,
        password=password,
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

    def start(self) -> None:
        if self.runtime.queue is not None:
            self._sync = asyncio.get_running_loop().create_task(self._ledger_sync())

    async def before_upstream(self, ctx: RequestContext) -> StageResponse | None:
        if (ctx.headers.get(DEFER_HEADER) or "").lower() in ("1", "true", "yes"):
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
        line = Line(record.id, "deferred", ctx.endpoint, ctx.body, ctx.tenant_name)
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
            headers={"location": poll_url, "x-thrifty-deferred-id": record.id},
        )

    async def _ledger_sync(self) -> None:
        """Record finished batch lines (written by the workers) into this gateway's ledger."""
        queue = self.runtime.queue
        assert queue is not None
        consumer = f"gateway-{os.getpid()}-{os.urandom(3).hex()}"
        keys = queue.keys
        while True:
            try:
                await queue.ensure_groups()
                while True:
                    got = await queue.redis.xreadgroup(
                        keys.ledger_group, consumer, {keys.ledger: ">"}, count=1000, block=1000
                    )
                    if not got:
                        continue
                    ids = []
                    spend: dict[tuple[str, str, int], float] = {}
                    for entry_id, fields in got[0][1]:
                        ids.append(entry_id)
                        f = {k.decode(): v.decode() for k, v in fields.items()}
                        self._record(f)
                        # spend per tenant, route and hour (budget periods start on the hour)
                        hour = int(entry_id.split(b"-")[0]) // 3_600_000
                        key = (f.get("t", "anonymous"), f.get("r", ""), hour)
                        spend[key] = spend.get(key, 0.0) + float(f.get("u", "0") or 0)
                    await charge(
                        find_budgets(self.stages),
                        [(t, r, usd, hour * 3600.0) for (t, r, hour), usd in spend.items()],
                    )
                    await queue.redis.xack(keys.ledger, keys.ledger_group, *ids)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch ledger sync failed; retrying")
                await asyncio.sleep(1.0)

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
            self._sync.cancel()
            await asyncio.gather(self._sync, return_exceptions=True)
        if self.coalescer is not None:
            await self.coalescer.aclose()
        if self.runtime.queue is not None:
            await self.runtime.queue.aclose()


async def batch_stage(config: GatewayConfig, resources: Any) -> BatchStage | None:
    """The stage factory: None when the config has no batch section."""
    if config.batch is None:
        return None
    queue = open_queue(config)
    if queue is not None:
        await queue.ensure_groups()
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
