"""Deferred single requests: `GET /v1/thrifty/deferred/{id}` polls a request that was queued
with `x-thrifty-defer: true` (202 while it waits; its answer, with the upstream's status,
when done)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from thrifty_core.errors import NotFoundError

from .deps import AuthedDep, StateDep

router = APIRouter()
JSON = "application/json"


@router.get("/v1/thrifty/deferred/{request_id}")
async def poll_deferred(request_id: str, state: StateDep, caller: AuthedDep) -> Response:
    from ..services.batching.stage import find_stage, queue_answers

    stage = find_stage(state.stages)
    queue = stage.runtime.queue if stage is not None else None
    with queue_answers():
        record = await queue.get(request_id) if queue is not None else None
    tenant = caller.tenant.name if caller.tenant else ""
    if (
        queue is None
        or record is None
        or not record.deferred
        or (record.tenant != tenant and not caller.admin)
    ):
        raise NotFoundError(f"No such deferred request: {request_id}", param="id")
    with queue_answers():
        result = await queue.result(request_id, "deferred")
    headers = {"x-thrifty-deferred-id": request_id, "x-thrifty-deferred-status": record.status}
    if result is None:
        body = {"id": request_id, "object": "thrifty.deferred", "status": record.status}
        return Response(orjson.dumps(body), status_code=202, media_type=JSON, headers=headers)
    if result.body is not None:
        status = result.status_code or 200
        return Response(
            orjson.dumps(result.body), status_code=status, media_type=JSON, headers=headers
        )
    error = {
        "message": result.error_message or "The deferred request failed.",
        "type": "upstream_error",
        "param": None,
        "code": result.error_code,
    }
    return Response(
        orjson.dumps({"error": error}), status_code=502, media_type=JSON, headers=headers
    )
