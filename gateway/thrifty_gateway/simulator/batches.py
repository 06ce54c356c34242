"""The simulator's Files + Batches API, behaving like OpenAI's.

A job moves validating -> in_progress -> finalizing -> completed in the background (times
divided by `SimulatorSettings.batch_speedup`); lines are answered by the same engine as the
synchronous endpoints. Faults, set with `POST /sim/batches/faults`:

* `fail_rate`: share of lines answered 500 in the error file (deterministic per job and line),
  in the next `fail_jobs` jobs (-1: every job);
* `expire_next`: the next N jobs expire half-way (the rest of their lines in the error file
  with code `batch_expired`, like OpenAI's);
* `forget_next`: the next N jobs are accepted, then forgotten: retrieving them answers 404
  (a job deleted on the provider's side, or one the key can no longer see);
* per-model faults (`--fault MODEL=500`) answer every line of that model with the fault;
* `enqueued_token_limit`: the organization's enqueued-token quota (0: none). A job whose
  input's tokens (about 4 characters each), with those of the jobs still running, pass it
  fails at validation with `token_limit_exceeded` and no files, as OpenAI's does;
* `refuse_next`: the next N creates are refused with a 400 (as OpenAI refuses one at create
  time: its enqueued-token limit, say), after the input file was uploaded;
* `fail_next`: the next N jobs fail at validation with `fail_code` / `fail_message` (about
  input line `fail_line`, 1-based, when set), status `failed`, no output or error file.

Files can be deleted (`DELETE /v1/files/{id}`, 404 when unknown); `files` in the stats is how
many are stored. Faults of deletes: `delete_delay` (seconds each delete waits before its
answer) and `delete_status` (an HTTP status every delete answers instead, e.g. 403 or 500;
0: none).

`GET /sim/batches/stats` counts API calls and lines; `POST /sim/reset` does not clear them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from . import engine
from .settings import SimState

log = logging.getLogger(__name__)
router = APIRouter()
JSON = "application/json"
VALIDATING_S = 0.5
LINES_PER_S = 2000.0
FINALIZING_S = 0.3
URLS = ("/v1/chat/completions", "/v1/embeddings")


@dataclass
class BatchSim:
    """Files, jobs and fault settings of one simulator process."""

    files: dict[str, tuple[dict[str, Any], bytes]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_rate: float = 0.0
    fail_jobs: int = -1
    expire_next: int = 0
    forget_next: int = 0
    enqueued_token_limit: int = 0
    fail_next: int = 0
    refuse_next: int = 0
    fail_code: str = "invalid_request"
    fail_message: str = "The batch input file is invalid (simulated)."
    fail_line: int | None = None
    delete_delay: float = 0.0
    delete_status: int = 0
    enqueued: dict[str, int] = field(default_factory=dict)  # job id -> its input's tokens
    stats: dict[str, int] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n


def _sim(request: Request) -> tuple[BatchSim, SimState]:
    app_state = request.app.state
    sim: SimState = app_state.sim
    batch_sim: BatchSim | None = getattr(app_state, "batch_sim", None)
    if batch_sim is None:
        batch_sim = app_state.batch_sim = BatchSim()
    return batch_sim, sim


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON)


def _error(status: int, message: str) -> Response:
    err = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return _json({"error": err}, status)


def _id(prefix: str) -> str:
    return f"{prefix}{os.urandom(12).hex()}"


# -- files ------------------------------------------------------------------------------------


@router.post("/v1/files")
async def upload_file(request: Request) -> Response:
    bs, _ = _sim(request)
    form = await request.form()
    upload = form.get("file")
    purpose = str(form.get("purpose") or "")
    if upload is None or isinstance(upload, str):
        return _error(400, "file is required")
    data = await upload.read()
    file_id = _id("file-sim")
    meta: dict[str, Any] = {
        "id": file_id,
        "object": "file",
        "bytes": len(data),
        "created_at": int(time.time()),
        "filename": upload.filename or "upload.jsonl",
        "purpose": purpose,
        "status": "processed",
    }
    bs.files[file_id] = (meta, data)
    bs.count("files_uploaded")
    return _json(meta)


@router.get("/v1/files")
async def list_files(request: Request) -> Response:
    """Newest first (or `order=asc`), `limit` (default 10,000) at a time after the file
    `after`, only those of `purpose` when given, as the Files API pages them."""
    bs, _ = _sim(request)
    query = request.query_params
    purpose = query.get("purpose")
    metas = [meta for meta, _ in bs.files.values() if purpose in (None, meta["purpose"])]
    metas.sort(key=lambda m: (m["created_at"], m["id"]), reverse=query.get("order") != "asc")
    return _page(request, metas, default_limit=10_000, max_limit=10_000)


def _page(
    request: Request, items: list[dict[str, Any]], *, default_limit: int, max_limit: int
) -> Response:
    """One page of `items` (in order) after the item `after`, as OpenAI's lists page."""
    after = request.query_params.get("after")
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    try:
        limit = int(request.query_params.get("limit", str(default_limit)))
    except ValueError:
        return _error(400, "limit must be an integer")
    limit = min(max_limit, max(1, limit))
    page = items[:limit]
    return _json(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


@router.get("/v1/files/{file_id}")
async def get_file(file_id: str, request: Request) -> Response:
    bs, _ = _sim(request)
    found = bs.files.get(file_id)
    return _json(found[0]) if found else _error(404, f"No such File object: {file_id}")


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, request: Request) -> Response:
    bs, _ = _sim(request)
    found = bs.files.get(file_id)
    if found is None:
        return _error(404, f"No such File object: {file_id}")
    bs.count("downloads")
    return Response(found[1], media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request) -> Response:
    bs, _ = _sim(request)
    bs.count("delete_calls")
    if bs.delete_delay:
        await asyncio.sleep(bs.delete_delay)
    if bs.delete_status:
        return _error(bs.delete_status, f"Deleting {file_id} failed (simulated).")
    if bs.files.pop(file_id, None) is None:
        return _error(404, f"No such File object: {file_id}")
    bs.count("files_deleted")
    return _json({"id": file_id, "object": "file", "deleted": True})


# -- batches ----------------------------------------------------------------------------------


@router.post("/v1/batches")
async def create_batch(request: Request) -> Response:
    bs, sim = _sim(request)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return _error(400, "Invalid JSON body.")
    file_id = body.get("input_file_id")
    if file_id not in bs.files:
        return _error(400, f"Invalid input_file_id: {file_id}")
    if body.get("endpoint") not in URLS:
        return _error(400, "endpoint must be /v1/chat/completions or /v1/embeddings")
    if body.get("completion_window") != "24h":
        return _error(400, "completion_window must be 24h")
    if sim.settings.batch_create_ms:
        await asyncio.sleep(sim.settings.batch_create_ms / 1000)
    if bs.refuse_next > 0:
        bs.refuse_next -= 1
        bs.count("creates_refused")
        return _error(400, "Enqueued token limit reached (simulated).")
    now = int(time.time())
    job: dict[str, Any] = {
        "id": _id("batch_sim"),
        "object": "batch",
        "endpoint": body["endpoint"],
        "errors": None,
        "input_file_id": file_id,
        "completion_window": "24h",
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": None,
        "expires_at": now + 86400,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": body.get("metadata"),
    }
    expire = bs.expire_next > 0
    if expire:
        bs.expire_next -= 1
    failure: dict[str, Any] | None = None
    if bs.fail_next > 0:
        bs.fail_next -= 1
        failure = {
            "code": bs.fail_code,
            "message": bs.fail_message,
            "param": None,
            "line": bs.fail_line,
        }
    fail_rate = bs.fail_rate if bs.fail_jobs != 0 else 0.0
    if bs.fail_jobs > 0:
        bs.fail_jobs -= 1
    bs.count("batches_created")
    if bs.forget_next > 0:
        bs.forget_next -= 1
        bs.count("batches_forgotten")
        return _json(job)
    bs.jobs[job["id"]] = job
    task = asyncio.get_running_loop().create_task(_run(bs, sim, job, expire, fail_rate, failure))
    bs.tasks.add(task)
    task.add_done_callback(bs.tasks.discard)
    return _json(job)


@router.get("/v1/batches/{batch_id}")
async def get_batch(batch_id: str, request: Request) -> Response:
    bs, _ = _sim(request)
    bs.count("retrieves")
    job = bs.jobs.get(batch_id)
    return _json(job) if job else _error(404, f"No such Batch object: {batch_id}")


@router.get("/v1/batches")
async def list_batches(request: Request) -> Response:
    """Newest first, `limit` (default 20, at most 100) at a time after the job `after`, as
    the Batches API pages them."""
    bs, _ = _sim(request)
    jobs = sorted(bs.jobs.values(), key=lambda j: (j["created_at"], j["id"]), reverse=True)
    return _page(request, jobs, default_limit=20, max_limit=100)


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request) -> Response:
    bs, _ = _sim(request)
    job = bs.jobs.get(batch_id)
    if job is None:
        return _error(404, f"No such Batch object: {batch_id}")
    bs.count("cancels")
    if job["status"] in ("validating", "in_progress"):
        job["status"] = "cancelling"
        job["cancelling_at"] = int(time.time())
    return _json(job)


@router.post("/sim/batches/faults")
async def set_faults(request: Request) -> Response:
    bs, _ = _sim(request)
    body = orjson.loads(await request.body() or b"{}")
    bs.fail_rate = float(body.get("fail_rate", bs.fail_rate))
    bs.fail_jobs = int(body.get("fail_jobs", bs.fail_jobs))
    bs.expire_next = int(body.get("expire_next", bs.expire_next))
    bs.forget_next = int(body.get("forget_next", bs.forget_next))
    bs.enqueued_token_limit = int(body.get("enqueued_token_limit", bs.enqueued_token_limit))
    bs.fail_next = int(body.get("fail_next", bs.fail_next))
    bs.refuse_next = int(body.get("refuse_next", bs.refuse_next))
    bs.fail_code = str(body.get("fail_code", bs.fail_code))
    bs.fail_message = str(body.get("fail_message", bs.fail_message))
    bs.delete_delay = float(body.get("delete_delay", bs.delete_delay))
    bs.delete_status = int(body.get("delete_status", bs.delete_status))
    if "fail_line" in body:
        bs.fail_line = None if body["fail_line"] is None else int(body["fail_line"])
    return _json(
        {
            "fail_rate": bs.fail_rate,
            "fail_jobs": bs.fail_jobs,
            "expire_next": bs.expire_next,
            "forget_next": bs.forget_next,
            "enqueued_token_limit": bs.enqueued_token_limit,
            "fail_next": bs.fail_next,
            "refuse_next": bs.refuse_next,
            "fail_code": bs.fail_code,
            "fail_message": bs.fail_message,
            "fail_line": bs.fail_line,
            "delete_delay": bs.delete_delay,
            "delete_status": bs.delete_status,
        }
    )


@router.get("/sim/batches/stats")
async def batch_stats(request: Request) -> Response:
    bs, _ = _sim(request)
    return _json({**bs.stats, "jobs": len(bs.jobs), "files": len(bs.files)})


# -- execution --------------------------------------------------------------------------------


def _roll(job_id: str, custom_id: str) -> float:
    digest = hashlib.sha256(f"{job_id}:{custom_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def _answer(sim: SimState, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    model = str(body.get("model", ""))
    fault = sim.settings.model_faults.get(model)
    if fault in ("429", "500", "502", "503"):
        err = {"message": "The server had an error (simulated).", "type": "server_error"}
        return int(fault), {"error": err}
    chat = url != "/v1/embeddings"
    refused = engine.chat_request_error(body) if chat else engine.embeddings_request_error(body)
    if refused is not None:
        err = {"message": refused[0], "type": "invalid_request_error", "param": refused[1]}
        return 400, {"error": err}
    if not chat:
        return 200, engine.embeddings(body, sim.settings.embedding_dimensions)
    return 200, engine.chat_completion(body, oracle=sim.oracle)


def _out(custom_id: str, status: int | None, body: Any, error: Any = None) -> bytes:
    response = (
        {"status_code": status, "request_id": _id("req_"), "body": body}
        if status is not None
        else None
    )
    return orjson.dumps(
        {"id": _id("batch_req_"), "custom_id": custom_id, "response": response, "error": error}
    )


def _tokens(data: bytes) -> int:
    return len(data) // 4


RUNNING = ("validating", "in_progress", "finalizing")


def _over_quota(bs: BatchSim, job: dict[str, Any], data: bytes) -> dict[str, Any] | None:
    """The `token_limit_exceeded` error of a job that would pass the enqueued-token quota."""
    if not bs.enqueued_token_limit:
        return None
    enqueued = sum(
        tokens
        for job_id, tokens in bs.enqueued.items()
        if job_id != job["id"] and bs.jobs.get(job_id, {}).get("status") in RUNNING
    )
    if enqueued + _tokens(data) <= bs.enqueued_token_limit:
        bs.enqueued[job["id"]] = _tokens(data)
        return None
    message = (
        f"Enqueued token limit reached in organization org-sim. Limit: "
        f"{bs.enqueued_token_limit:,} enqueued tokens. Please try again once some "
        "in_progress batches have been completed."
    )
    return {"code": "token_limit_exceeded", "message": message, "param": None, "line": None}


async def _run(
    bs: BatchSim,
    sim: SimState,
    job: dict[str, Any],
    expire: bool,
    fail_rate: float,
    failure: dict[str, Any] | None = None,
) -> None:
    speed = sim.settings.batch_speedup
    await asyncio.sleep(VALIDATING_S / speed)
    if job["status"] == "cancelling":
        job.update(status="cancelled", cancelled_at=int(time.time()))
        return
    found = bs.files.get(job["input_file_id"])
    data = found[1] if found is not None else b""
    if found is None:
        failure = {
            "code": "invalid_file",
            "message": f"No such File object: {job['input_file_id']}",
            "param": "input_file_id",
            "line": None,
        }
    failure = failure or _over_quota(bs, job, data)
    if failure is not None:
        # Refused at validation, as OpenAI's: no lines run, no output or error file.
        job.update(
            status="failed",
            failed_at=int(time.time()),
            errors={"object": "list", "data": [failure]},
        )
        bs.count("batches_failed")
        return
    lines = []
    for raw in data.splitlines():
        if raw.strip():
            lines.append(orjson.loads(raw))
    job.update(status="in_progress", in_progress_at=int(time.time()))
    job["request_counts"]["total"] = len(lines)
    out: list[bytes] = []
    err: list[bytes] = []
    cut = len(lines) // 2 if expire else len(lines)
    for index, item in enumerate(lines):
        custom_id = item["custom_id"]
        if index >= cut or job["status"] == "cancelling":
            code = "batch_expired" if expire else "batch_cancelled"
            msg = "This request could not be executed before the completion window expired."
            err.append(_out(custom_id, None, None, {"code": code, "message": msg}))
            job["request_counts"]["failed"] += 1
            continue
        if index % 200 == 0:
            await asyncio.sleep(200 / LINES_PER_S / speed)
        status, body = _answer(sim, job["endpoint"], item.get("body") or {})
        if status == 200 and fail_rate and _roll(job["id"], custom_id) < fail_rate:
            status = 500
            body = {"error": {"message": "Internal error (simulated).", "type": "server_error"}}
        bs.count("lines")
        if status == 200:
            out.append(_out(custom_id, status, body))
            job["request_counts"]["completed"] += 1
        else:
            err.append(_out(custom_id, status, body))
            job["request_counts"]["failed"] += 1
    job.update(status="finalizing", finalizing_at=int(time.time()))
    await asyncio.sleep(FINALIZING_S / speed)
    for name, rows in (("output_file_id", out), ("error_file_id", err)):
        if rows:
            file_id = _id("file-sim")
            meta = {
                "id": file_id,
                "object": "file",
                "bytes": sum(len(r) + 1 for r in rows),
                "created_at": int(time.time()),
                "filename": f"{job['id']}_{name}.jsonl",
                "purpose": "batch_output",
                "status": "processed",
            }
            bs.files[file_id] = (meta, b"\n".join(rows) + b"\n")
            job[name] = file_id
    final = "expired" if expire else ("cancelled" if job["status"] == "cancelling" else "completed")
    job.update(status=final, **{f"{final}_at": int(time.time())})
