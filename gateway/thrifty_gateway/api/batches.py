"""The OpenAI Batches API (`/v1/batches`): create, retrieve, list, cancel.

A batch is created from an uploaded `batch` file: its lines are validated again (the route
table may have changed) and enqueued; the workers run them and finalize the batch with an
output and an error file keyed by `custom_id`. A tenant (or a route of the batch) at its hard
budget limit is refused with 429 `budget_exceeded`; what the lines cost is charged to the
budgets as they finish. The deferred-request routes are mounted here.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from thrifty_core.errors import NO_RETRY, InvalidRequestError, NotFoundError, ThriftyError

from ..services.batching.budgets import find_budgets, refuse_over_hard_limit
from ..services.batching.finalize import finalize
from ..services.batching.model import URLS, BatchRecord, Line, new_id
from ..services.batching.queue import RedisQueue
from ..services.batching.validate import check_metadata, validate_input
from ..services.proxy import parse_body
from . import deferred
from .deps import AuthedDep, Caller, StateDep
from .files import RuntimeDep, json_response, owned_file

router = APIRouter()
router.include_router(deferred.router)


class QueueUnavailableError(ThriftyError):
    status = 503
    type = "server_error"
    code = "batch_queue_unavailable"


def require_queue(queue: RedisQueue | None) -> RedisQueue:
    if queue is None:
        raise QueueUnavailableError(
            "The batch queue needs Redis (config `batch.redisUrl`).", headers=NO_RETRY
        )
    return queue


async def owned_batch(queue: RedisQueue, caller: Caller, batch_id: str) -> BatchRecord:
    record = await queue.get(batch_id)
    tenant = caller.tenant.name if caller.tenant else ""
    if record is None or record.deferred or (record.tenant != tenant and not caller.admin):
        raise NotFoundError(f"No such Batch object: {batch_id}", param="batch_id")
    return record


@router.post("/v1/batches")
async def create_batch(
    request: Request, runtime: RuntimeDep, caller: AuthedDep, state: StateDep
) -> Response:
    queue = require_queue(runtime.queue)
    body = parse_body(await request.body())
    endpoint = body.get("endpoint")
    if not isinstance(endpoint, str) or endpoint not in URLS:
        raise InvalidRequestError(
            f"endpoint must be one of {', '.join(URLS)}.", param="endpoint", code="invalid_value"
        )
    if body.get("completion_window", "24h") != runtime.spec.completion_window:
        raise InvalidRequestError(
            f"completion_window must be {runtime.spec.completion_window}.",
            param="completion_window",
            code="invalid_value",
        )
    metadata = body.get("metadata")
    check_metadata(metadata)
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str) or not file_id:
        raise InvalidRequestError("input_file_id must be a file id.", param="input_file_id")
    meta = await owned_file(runtime, caller, file_id)
    if meta.purpose != "batch":
        raise InvalidRequestError("The input file must have purpose 'batch'.", param="file_id")
    # Parsing up to `maxFileBytes` (200 MB by default) takes about a second: off the event loop,
    # so other requests are not held up meanwhile, and a few files at a time (memory).
    async with runtime.checks:
        data = await runtime.store.read(file_id) or b""
        report = await asyncio.to_thread(
            validate_input, data, runtime.spec.limits, runtime.routes, runtime.max_line_bytes
        )
        del data
    mismatched = [i for i, line in enumerate(report.lines, 1) if line.url != endpoint]
    if not report.ok or mismatched:
        detail = report.message() if not report.ok else f"lines use a url other than {endpoint}"
        raise InvalidRequestError(
            f"Invalid batch input file: {detail}", param="input_file_id", code="invalid_batch_input"
        )
    assert caller.tenant is not None
    tenant = caller.tenant.name
    routes = {str(line.body.get("model", "")) for line in report.lines}
    await refuse_over_hard_limit(find_budgets(state.stages), tenant, routes, time.time())
    record = BatchRecord(
        id=new_id("batch"),
        endpoint=str(endpoint),
        input_file_id=file_id,
        completion_window=runtime.spec.completion_window,
        metadata=metadata,
        tenant=tenant,
    )
    lines = [Line(record.id, x.custom_id, x.endpoint, x.body, tenant) for x in report.lines]
    record = await queue.create(record, lines)
    return json_response(record.public())


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(batch_id: str, runtime: RuntimeDep, caller: AuthedDep) -> Response:
    queue = require_queue(runtime.queue)
    return json_response((await owned_batch(queue, caller, batch_id)).public())


@router.get("/v1/batches")
async def list_batches(
    runtime: RuntimeDep, caller: AuthedDep, after: str | None = None, limit: int = 20
) -> Response:
    queue = require_queue(runtime.queue)
    assert caller.tenant is not None
    records, more = await queue.list_batches(caller.tenant.name, after, max(1, min(limit, 100)))
    data = [r.public() for r in records]
    return json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }
    )


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, runtime: RuntimeDep, caller: AuthedDep) -> Response:
    queue = require_queue(runtime.queue)
    record = await owned_batch(queue, caller, batch_id)
    moved = await queue.transition(batch_id, "cancelling", cancelling_at=int(time.time()))
    if moved is None:
        if record.status in ("cancelling", "cancelled"):
            return json_response(record.public())
        raise InvalidRequestError(
            f"Cannot cancel a batch with status {record.status}.", code="invalid_state"
        )
    await finalize(queue, runtime.store, batch_id, owner=f"gateway-cancel-{batch_id}")
    return json_response((await owned_batch(queue, caller, batch_id)).public())
