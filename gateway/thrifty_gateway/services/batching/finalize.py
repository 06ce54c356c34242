"""Finalizing a batch: once every line has a result, write the output and error files (in
input order, one line per custom_id) and move the batch to its terminal status."""

from __future__ import annotations

import logging
import os
import time

import orjson

from .files import FileStore
from .model import BatchRecord, Result
from .queue import RedisQueue

log = logging.getLogger(__name__)
# A batch's finalize lease: renewed while its files are written (`RedisQueue.holding`), so a
# finalizer that dies holds the batch up this long at most.
FINALIZE_LEASE_MS = 30_000


def output_line(batch_id: str, result: Result) -> bytes:
    response = (
        {
            "status_code": result.status_code,
            "request_id": f"req_{os.urandom(8).hex()}",
            "body": result.body,
        }
        if result.status_code is not None
        else None
    )
    error = (
        {"code": result.error_code, "message": result.error_message}
        if result.error_code is not None
        else None
    )
    item = {
        "id": f"batch_req_{batch_id[-12:]}_{os.urandom(6).hex()}",
        "custom_id": result.custom_id,
        "response": response,
        "error": error,
    }
    return orjson.dumps(item)


def order_of(input_data: bytes | None, results: dict[str, Result]) -> list[str]:
    """custom_ids in input order (results without an input line go last)."""
    order: list[str] = []
    for raw in (input_data or b"").splitlines():
        if raw.strip():
            try:
                order.append(str(orjson.loads(raw)["custom_id"]))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
    known = set(order)
    return order + sorted(k for k in results if k not in known)


async def finalize(
    queue: RedisQueue,
    store: FileStore,
    batch_id: str,
    owner: str,
    *,
    stale_validating_seconds: float | None = None,
) -> bool:
    """Finalize `batch_id` if all its lines are done; True when it is terminal afterwards.
    With `stale_validating_seconds`, a batch still `validating` that long after it was
    created (its creation was cut short) is failed instead."""
    record = await queue.get(batch_id)
    if record is None:
        await queue.deactivate(batch_id)
        return True
    counts = record.request_counts
    if record.status in ("completed", "failed", "expired", "cancelled"):
        await queue.deactivate(batch_id)
        return True
    stale = (
        stale_validating_seconds is not None
        and record.in_progress_at is None
        and time.time() - record.created_at >= stale_validating_seconds
    )
    if stale and record.status == "validating":
        return await fail_interrupted(queue, record)
    if stale and record.status == "cancelling" and not await queue.fully_queued(batch_id):
        # Cancelled while its creation was cut short: some lines were never queued, so it would
        # wait for them for ever. It ends cancelled (its queued lines are answered so, unrun).
        moved = await queue.transition(batch_id, "cancelled", cancelled_at=int(time.time()))
        if moved is not None:
            await queue.deactivate(batch_id)
            log.warning("batch %s cancelled: its creation was interrupted", batch_id)
        return moved is not None
    if counts.completed + counts.failed < counts.total:
        return False
    lease = f"finalize:{batch_id}"
    if not await queue.lease(lease, owner, FINALIZE_LEASE_MS):
        return False
    try:
        async with queue.holding(lease, owner, FINALIZE_LEASE_MS):
            if record.status != "finalizing":
                moved = await queue.transition(
                    batch_id, "finalizing", finalizing_at=int(time.time())
                )
                if moved is None:
                    return False
                record = moved  # as stored when it moved: a cancel since the read is in it
            await _write_files(queue, store, record, record.cancelling_at is not None)
            return True
    finally:
        await queue.release(lease, owner)


async def fail_interrupted(queue: RedisQueue, record: BatchRecord) -> bool:
    """Fail a batch whose creation stopped before all its lines were queued (its queued
    lines not yet run are then answered `batch_failed` by the workers, without a call)."""
    error = {
        "code": "enqueue_interrupted",
        "message": "The batch was not fully queued (the gateway stopped while creating it). "
        "Create it again.",
        "param": None,
        "line": None,
    }
    moved = await queue.transition(
        record.id,
        "failed",
        failed_at=int(time.time()),
        errors={"object": "list", "data": [error]},
    )
    if moved is None:
        return False
    await queue.deactivate(record.id)
    log.warning("batch %s failed: its creation was interrupted", record.id)
    return True


async def _write_files(
    queue: RedisQueue, store: FileStore, record: BatchRecord, cancelling: bool
) -> None:
    results = await queue.results(record.id)
    fields: dict[str, object] = {}
    if not record.deferred:
        data = await store.read(record.input_file_id) if record.input_file_id else None
        out: list[bytes] = []
        err: list[bytes] = []
        for custom_id in order_of(data, results):
            result = results.get(custom_id)
            if result is None:
                continue
            (out if result.ok else err).append(output_line(record.id, result))
        stem = record.id.removeprefix("batch_")
        if out:
            meta = await store.put(
                b"\n".join(out) + b"\n",
                filename=f"{record.id}_output.jsonl",
                purpose="batch_output",
                tenant=record.tenant,
                file_id=f"file-{stem}-output",
                over_cap=True,  # the answers were paid for: never refused by the upload cap
            )
            fields["output_file_id"] = meta.id
        if err:
            meta = await store.put(
                b"\n".join(err) + b"\n",
                filename=f"{record.id}_error.jsonl",
                purpose="batch_output",
                tenant=record.tenant,
                file_id=f"file-{stem}-error",
                over_cap=True,
            )
            fields["error_file_id"] = meta.id
    now = int(time.time())
    expired = any(r.error_code == "batch_expired" for r in results.values())
    final = "cancelled" if cancelling else ("expired" if expired else "completed")
    stamp = f"{final}_at"
    await queue.transition(record.id, final, **{stamp: now}, **fields)
    await queue.deactivate(record.id)
    log.info("batch %s %s (%d results)", record.id, final, len(results))
