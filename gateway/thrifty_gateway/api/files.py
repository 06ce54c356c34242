"""The OpenAI Files API (`/v1/files`): upload, list, retrieve, content, delete.

Files live in the batch queue's file store (a size-limited directory shared with the
workers). An upload is limited by the queue's `limits.maxFileBytes` (not by the chat body
limit, which the body-size middleware leaves to this route): refused with 413 by its
`Content-Length` up front, or as soon as a chunked body passes the limit. The multipart
parser spools the file to disk and it is copied into the store in chunks, never held whole
in memory. An upload with purpose `batch` is validated line by line first: a bad file is
refused with a report naming each bad line, and nothing is stored.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response
from starlette.types import Message, Receive

from thrifty_core.errors import (
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ThriftyError,
)

from ..services.batching.files import FileObject, StoreFullError
from ..services.batching.stage import BatchRuntime, find_stage
from ..services.batching.validate import bounded_lines, validate_lines
from .deps import AuthedDep, Caller, StateDep

router = APIRouter()
JSON = "application/json"
PURPOSES = frozenset({"batch", "batch_output", "assistants", "fine-tune", "vision", "user_data"})
MULTIPART_OVERHEAD = 64 * 1024  # room for the multipart framing and the other form fields


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


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"The file exceeds the upload limit of {limit} bytes.")


def _limited(receive: Receive, max_bytes: int, limit: int) -> Receive:
    """`receive` that raises 413 once the body passes `max_bytes`."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise _too_large(limit)
        return message

    return counted


async def _check_and_store(
    runtime: BatchRuntime, upload: UploadFile, purpose: str, tenant: str, limit: int
) -> FileObject:
    if upload.size is not None and upload.size > limit:
        raise _too_large(limit)
    if purpose == "batch":

        def check() -> str | None:
            upload.file.seek(0)
            report = validate_lines(
                bounded_lines(upload.file, runtime.max_line_bytes),
                upload.size or 0,
                runtime.spec.limits,
                runtime.routes,
                keep_lines=False,
                max_line_bytes=runtime.max_line_bytes,
            )
            return None if report.ok else report.message()

        async with runtime.checks:
            problem = await asyncio.to_thread(check)
        if problem is not None:
            raise InvalidRequestError(
                f"Invalid batch input file: {problem}", param="file", code="invalid_batch_input"
            )
    try:
        return await runtime.store.put_stream(
            upload.file, filename=upload.filename or "upload.jsonl", purpose=purpose, tenant=tenant
        )
    except StoreFullError as exc:
        raise PayloadTooLargeError(str(exc), code="file_store_full") from exc


@router.post("/v1/files")
async def upload_file(request: Request, runtime: RuntimeDep, caller: AuthedDep) -> Response:
    limit = runtime.spec.limits.max_file_bytes
    max_body = limit + MULTIPART_OVERHEAD
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_body:
        raise _too_large(limit)
    limited = Request(request.scope, _limited(request.receive, max_body, limit))
    form = await limited.form(max_files=1, max_fields=8)
    try:
        upload = form.get("file")
        purpose = str(form.get("purpose") or "")
        if upload is None or isinstance(upload, str):
            raise InvalidRequestError("'file' is a required multipart field.", param="file")
        if purpose not in PURPOSES:
            raise InvalidRequestError(f"Invalid purpose {purpose!r}.", param="purpose")
        assert caller.tenant is not None
        meta = await _check_and_store(runtime, upload, purpose, caller.tenant.name, limit)
    finally:
        await form.close()
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
