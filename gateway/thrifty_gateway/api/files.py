"""The OpenAI Files API (`/v1/files`): upload, list, retrieve, content, delete.

Files live in the batch queue's file store (a size-limited directory shared with the
workers). An upload with purpose `batch` is validated line by line first: a bad file is
refused with a report naming each bad line, and nothing is stored.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from thrifty_core.errors import (
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ThriftyError,
)

from ..services.batching.files import FileObject, StoreFullError
from ..services.batching.stage import BatchRuntime, find_stage
from ..services.batching.validate import validate_input
from .deps import AuthedDep, Caller, StateDep

router = APIRouter()
JSON = "application/json"
PURPOSES = frozenset({"batch", "batch_output", "assistants", "fine-tune", "vision", "user_data"})


class BatchingDisabledError(ThriftyError):
    status = 404
    type = "invalid_request_error"
    code = "batching_disabled"


async def get_runtime(state: StateDep) -> BatchRuntime:
    stage = find_stage(state.stages)
    if stage is None:
        raise BatchingDisabledError("Batching is not enabled on this gateway (config `batch`).")
    return stage.runtime


RuntimeDep = Annotated[BatchRuntime, Depends(get_runtime)]


def json_response(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON)


async def owned_file(runtime: BatchRuntime, caller: Caller, file_id: str) -> FileObject:
    meta = await runtime.store.get(file_id)
    tenant = caller.tenant.name if caller.tenant else ""
    if meta is None or (meta.tenant != tenant and not caller.admin):
        raise NotFoundError(f"No such File object: {file_id}", param="file_id")
    return meta


@router.post("/v1/files")
async def upload_file(request: Request, runtime: RuntimeDep, caller: AuthedDep) -> Response:
    form = await request.form()
    upload = form.get("file")
    purpose = str(form.get("purpose") or "")
    if upload is None or isinstance(upload, str):
        raise InvalidRequestError("'file' is a required multipart field.", param="file")
    if purpose not in PURPOSES:
        raise InvalidRequestError(f"Invalid purpose {purpose!r}.", param="purpose")
    data = await upload.read()
    await upload.close()
    if purpose == "batch":
        report = validate_input(data, runtime.spec.limits, runtime.routes)
        if not report.ok:
            raise InvalidRequestError(
                f"Invalid batch input file: {report.message()}",
                param="file",
                code="invalid_batch_input",
            )
    assert caller.tenant is not None
    try:
        meta = await runtime.store.put(
            data,
            filename=upload.filename or "upload.jsonl",
            purpose=purpose,
            tenant=caller.tenant.name,
        )
    except StoreFullError as exc:
        raise PayloadTooLargeError(str(exc), code="file_store_full") from exc
    return json_response(meta.public())


@router.get("/v1/files")
async def list_files(
    runtime: RuntimeDep, caller: AuthedDep, purpose: str | None = None
) -> Response:
    assert caller.tenant is not None
    files = await runtime.store.list(caller.tenant.name, purpose)
    return json_response({"object": "list", "data": [f.public() for f in files], "has_more": False})


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, runtime: RuntimeDep, caller: AuthedDep) -> Response:
    return json_response((await owned_file(runtime, caller, file_id)).public())


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, runtime: RuntimeDep, caller: AuthedDep) -> Response:
    await owned_file(runtime, caller, file_id)
    data = await runtime.store.read(file_id)
    if data is None:
        raise NotFoundError(f"No such File object: {file_id}", param="file_id")
    return Response(data, media_type="application/jsonl")


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, runtime: RuntimeDep, caller: AuthedDep) -> Response:
    await owned_file(runtime, caller, file_id)
    deleted = await runtime.store.delete(file_id)
    return json_response({"id": file_id, "object": "file", "deleted": deleted})
