"""Provider mode: pack queued lines into provider batch jobs and read their results back.

`Packer` groups lines by (provider, model, url) and flushes a pack when it reaches the
lines-per-job or bytes-per-job limit, or when its oldest line has waited the flush window.
`ProviderBatches` is the protocol of a provider's Batch API; `OpenAIBatches` implements it
with the official `openai` client (any OpenAI-compatible base URL, the simulator included).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import openai
import orjson

from thrifty_core.config import ProviderConfig

from ..pipeline import Target
from .model import ENDPOINT_URLS, Line

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class JobError:
    """One of the errors a provider job failed with (OpenAI's `errors.data[]`): `line` is the
    1-based line of the job's input file it is about, None for the whole job (a quota)."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None


# A job refused for the organization's enqueued-token quota: it frees as jobs finish (hours),
# whatever the lines; waiting it out is not an attempt of theirs.
QUOTA_CODES = frozenset({"token_limit_exceeded"})
MESSAGE_CHARS = 300  # the most of a provider's error message carried into results and logs


@dataclass(frozen=True, slots=True)
class JobState:
    status: str
    output_file_id: str | None
    error_file_id: str | None
    errors: tuple[JobError, ...] = ()
    input_file_id: str | None = None

    def job_errors(self) -> list[JobError]:
        """The errors about the whole job (not about one of its lines)."""
        return [e for e in self.errors if e.line is None]

    def line_errors(self) -> dict[int, JobError]:
        """The errors about single lines, by 1-based input line."""
        return {e.line: e for e in self.errors if e.line is not None}


def job_errors(errors: Any) -> tuple[JobError, ...]:
    """OpenAI's `errors` of a batch (`{"object": "list", "data": [...]}`, or the SDK's model
    of it) as `JobError`s; anything unreadable is skipped."""
    if errors is None:
        return ()
    if hasattr(errors, "model_dump"):
        errors = errors.model_dump()
    data = errors.get("data") if isinstance(errors, dict) else None
    out: list[JobError] = []
    for item in data or []:
        if not isinstance(item, dict):
            continue
        line = item.get("line")
        param = item.get("param")
        out.append(
            JobError(
                str(item.get("code") or "provider_job_failed"),
                str(item.get("message") or "")[:MESSAGE_CHARS],
                line if isinstance(line, int) else None,
                str(param) if param is not None else None,
            )
        )
    return tuple(out)


class SubmittedJob(str):
    """A created job's id (what `submit` returns), carrying the id of its input file: a job
    given up later (gone at the provider, say) cannot tell it any more, and the upload (every
    tenant's prompts) must still be deleted."""

    input_file_id: str | None

    def __new__(cls, job_id: str, input_file_id: str | None) -> SubmittedJob:
        job = super().__new__(cls, job_id)
        job.input_file_id = input_file_id
        return job


class ProviderBatches(Protocol):
    async def submit(
        self, target: Target, url: str, jsonl: bytes, window: str, marker: str | None = None
    ) -> str:
        """Upload and create the job, carrying `marker` (a new one when None) in its metadata."""
        ...

    async def find(self, target: Target, marker: str, since: float) -> str | None:
        """The provider's job carrying `marker`, made after `since`, if it made one."""
        ...

    async def find_upload(self, target: Target, marker: str, since: float) -> str | None:
        """The input file uploaded for the job carrying `marker`, made after `since`, if the
        upload went through (a worker that died before the create left it there)."""
        ...

    async def state(self, target: Target, job_id: str) -> JobState: ...

    async def download(self, target: Target, file_id: str) -> bytes: ...

    async def cancel(self, target: Target, job_id: str) -> None: ...

    async def delete(self, target: Target, file_id: str) -> None:
        """Delete a file at the provider (a job's input, output or error file); a file that
        is gone already is not an error."""
        ...

    async def aclose(self) -> None: ...


MARKER = "thrifty_submit"  # metadata key of the marker a job is found by after a timeout
# seconds before each look for a job whose create timed out
FIND_PAUSES = (0.5, 1.0, 2.0, 4.0)
FIND_MARGIN = 600.0  # seconds before an intent's start that jobs are still searched for it
CREATE_TRIES = 3  # a batch create refused with one of RETRY_CREATE is tried this often
RETRY_CREATE = frozenset({429, 500, 502, 503, 504})


def upload_name(marker: str) -> str:
    """The file name a job's input is uploaded under: its marker, so that the upload of a
    worker that died before creating the job is found and deleted."""
    return f"thrifty-{marker}.jsonl"


class OpenAIBatches:
    """Files + Batches calls through `openai.AsyncOpenAI`, one client per provider."""

    def __init__(
        self, providers: list[ProviderConfig], keys: Mapping[str, str | None], timeout: float = 60
    ) -> None:
        self._clients = {
            p.name: openai.AsyncOpenAI(
                base_url=p.base_url, api_key=keys.get(p.name) or "none", timeout=timeout
            )
            for p in providers
        }

    async def submit(
        self, target: Target, url: str, jsonl: bytes, window: str, marker: str | None = None
    ) -> str:
        """Upload the lines and create the job. The create is never retried blindly: the
        Batches API takes no idempotency key, and a create that timed out after the provider
        accepted it, retried, made two billed jobs (the SDK retries twice by default). The
        job carries a one-off marker in its metadata instead; after a timeout or a dropped
        connection the provider's recent jobs are searched for it."""
        client = self._clients[target.provider]
        marker = marker or uuid.uuid4().hex
        uploaded = await client.files.create(file=(upload_name(marker), jsonl), purpose="batch")
        try:
            made = await self._create(client, uploaded.id, url, window, marker)
            return SubmittedJob(made, uploaded.id)
        except BaseException:
            # No job (that we know of) reads the upload: it would stay at the provider, with
            # every tenant's prompts, counting against the storage quota. A job created after
            # all (a create that timed out) then fails validation instead of running twice.
            try:
                await client.files.delete(uploaded.id)
            except Exception as exc:
                log.warning(
                    "deleting provider file %s failed (%s)", uploaded.id, type(exc).__name__
                )
            raise

    async def _create(
        self, client: openai.AsyncOpenAI, file_id: str, url: str, window: str, marker: str
    ) -> str:
        since = time.time()  # (the job, if made, is newer: `_find` looks back to it)
        for attempt in range(CREATE_TRIES):
            try:
                job = await client.with_options(max_retries=0).batches.create(
                    input_file_id=file_id,
                    endpoint=url,  # type: ignore[arg-type]
                    completion_window=window,  # type: ignore[arg-type]
                    metadata={"created_by": "thrifty", MARKER: marker},
                )
                return job.id
            except (openai.APITimeoutError, openai.APIConnectionError):
                # The provider may still be creating it: look a few times, then give up (the
                # lines are retried; a job made after that is the one duplicate left possible).
                for pause in FIND_PAUSES:
                    await asyncio.sleep(pause)
                    found = await self._find(client, marker, since)
                    if found is not None:
                        log.info("provider batch create timed out but the job exists: %s", found)
                        return found
                raise
            except openai.APIStatusError as exc:
                # Refused for now (429, 5xx): tried again here, as the SDK would have, once it
                # is clear that no job was made after all.
                if exc.status_code not in RETRY_CREATE or attempt == CREATE_TRIES - 1:
                    raise
                await asyncio.sleep(2.0**attempt)
                found = await self._find(client, marker, since)
                if found is not None:
                    return found
        raise AssertionError("unreachable")  # pragma: no cover

    async def find(self, target: Target, marker: str, since: float) -> str | None:
        return await self._find(self._clients[target.provider], marker, since)

    async def _find(self, client: openai.AsyncOpenAI, marker: str, since: float) -> str | None:
        """The job carrying `marker`, if the provider made one: every job made since `since` (a
        margin before it: clocks differ), newest first, page after page (not the newest 100
        only: a busy key makes more meanwhile)."""
        async for job in client.batches.list(limit=100):
            if (job.metadata or {}).get(MARKER) == marker:
                return job.id
            if job.created_at < since - FIND_MARGIN:
                return None
        return None

    async def find_upload(self, target: Target, marker: str, since: float) -> str | None:
        """Newest first, page after page, back to `since` (less the margin). (A provider that
        ignores `order=desc` and lists oldest first makes this find nothing: best effort, as
        every delete of a provider file.)"""
        client = self._clients[target.provider]
        name = upload_name(marker)
        async for uploaded in client.files.list(purpose="batch", order="desc", limit=100):
            if uploaded.filename == name:
                return uploaded.id
            if uploaded.created_at < since - FIND_MARGIN:
                return None
        return None

    async def state(self, target: Target, job_id: str) -> JobState:
        job = await self._clients[target.provider].batches.retrieve(job_id)
        return JobState(
            job.status,
            job.output_file_id,
            job.error_file_id,
            job_errors(job.errors),
            job.input_file_id,
        )

    async def download(self, target: Target, file_id: str) -> bytes:
        content = await self._clients[target.provider].files.content(file_id)
        return content.content

    async def cancel(self, target: Target, job_id: str) -> None:
        await self._clients[target.provider].batches.cancel(job_id)

    async def delete(self, target: Target, file_id: str) -> None:
        try:
            await self._clients[target.provider].files.delete(file_id)
        except openai.NotFoundError:
            return

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()


@dataclass
class Pack:
    target: Target
    url: str
    entries: list[tuple[str, Line]] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    size: int = 0
    first_at: float = 0.0

    def jsonl(self) -> bytes:
        return b"\n".join(self.lines) + b"\n"

    def only(self, entries: list[tuple[str, Line]]) -> Pack:
        """The pack with only `entries` (a subset of its own)."""
        keep = {eid for eid, _ in entries}
        pairs = [(e, raw) for e, raw in zip(self.entries, self.lines, strict=True) if e[0] in keep]
        return Pack(
            self.target,
            self.url,
            [e for e, _ in pairs],
            [raw for _, raw in pairs],
            sum(len(raw) + 1 for _, raw in pairs),
            self.first_at,
        )


def job_line(entry_id: str, line: Line, target: Target) -> bytes:
    """The provider's input line: our stream entry id as its custom_id (unique per job)."""
    return orjson.dumps(
        {
            "custom_id": entry_id,
            "method": "POST",
            "url": ENDPOINT_URLS[line.endpoint],
            "body": {**line.body, "model": target.model},
        }
    )


class Packer:
    """Pending packs, flushed by count, size or age."""

    def __init__(self, max_lines: int, max_bytes: int, window_seconds: float) -> None:
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.window = window_seconds
        self._packs: dict[tuple[str, str, str], Pack] = {}

    def __len__(self) -> int:
        return sum(len(p.entries) for p in self._packs.values())

    def add(self, entry_id: str, line: Line, target: Target, now: float) -> list[Pack]:
        """Add a line; returns packs that are full (flush them now)."""
        url = ENDPOINT_URLS[line.endpoint]
        key = (target.provider, target.model, url)
        data = job_line(entry_id, line, target)
        flushed: list[Pack] = []
        pack = self._packs.get(key)
        if pack is not None and pack.size + len(data) + 1 > self.max_bytes:
            flushed.append(self._packs.pop(key))
            pack = None
        if pack is None:
            pack = self._packs[key] = Pack(target, url, first_at=now)
        pack.entries.append((entry_id, line))
        pack.lines.append(data)
        pack.size += len(data) + 1
        if len(pack.entries) >= self.max_lines:
            flushed.append(self._packs.pop(key))
        return flushed

    def due(self, now: float) -> list[Pack]:
        """Packs whose oldest line has waited the flush window."""
        keys = [k for k, p in self._packs.items() if now - p.first_at >= self.window]
        return [self._packs.pop(k) for k in keys]

    def next_due(self, now: float) -> float | None:
        """Seconds until the next pack is due (None when nothing is pending)."""
        if not self._packs:
            return None
        return max(0.0, min(p.first_at for p in self._packs.values()) + self.window - now)


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """A provider output/error line for one of our entries."""

    status_code: int | None
    body: dict[str, Any] | None
    error_code: str | None
    error_message: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        return self.status_code is None or self.status_code in RETRYABLE_STATUS


def parse_outputs(*files: bytes) -> dict[str, LineOutcome]:
    """Provider output and error files -> outcome per custom_id (our entry id)."""
    out: dict[str, LineOutcome] = {}
    for data in files:
        for raw in data.splitlines():
            if not raw.strip():
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.warning("provider output line is not JSON; ignored")
                continue
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str):
                continue
            response = item.get("response") or None
            error = item.get("error") or None
            status = response.get("status_code") if isinstance(response, dict) else None
            body = response.get("body") if isinstance(response, dict) else None
            outcome = LineOutcome(
                status,
                body if isinstance(body, dict) else None,
                (error or {}).get("code") if isinstance(error, dict) else None,
                (error or {}).get("message") if isinstance(error, dict) else None,
            )
            if custom_id not in out or outcome.ok:
                out[custom_id] = outcome
    return out


def retry_delay(step: int, base: float, cap: float, jitter: float = 0.2) -> float:
    """Seconds before the `step`-th (1-based) retry of a line whose provider job failed as a
    whole or could not be submitted: `base` doubling per step up to `cap`, less up to
    `jitter` of it at random (lines of one failed job do not all come back at once)."""
    delay = min(cap, base * 2.0 ** max(step - 1, 0))
    return float(delay * (1.0 - jitter * random.random()))


def next_poll(interval: float, started: float, now: float) -> float:
    """Backoff: poll at the initial interval, stretching by 1.5x per elapsed interval up to
    ten times it."""
    elapsed = max(now - started, 0.0)
    ratio: float = elapsed / max(interval, 1e-3)
    factor = min(10.0, 1.0 + 0.5 * math.sqrt(ratio))
    return interval * factor


TERMINAL_JOB = frozenset({"completed", "failed", "expired", "cancelled"})


def poll_error_is_gone(exc: BaseException) -> bool:
    """A poll error saying the job cannot be retrieved any more (404, 401, 403, other 4xx
    but 408/409/429), as opposed to a transient one (network, 5xx, rate limit)."""
    if isinstance(exc, openai.APIStatusError):
        return 400 <= exc.status_code < 500 and exc.status_code not in RETRYABLE_STATUS
    return False


def job_lost(
    *, failures: int, gone: bool, max_failures: int, started: float, deadline: float, now: float
) -> str | None:
    """Why to give up on a provider job (None: keep polling): `failures` consecutive polls
    failed and the last said the job is gone, or the job is past `deadline` seconds after
    `started` (its completion window and a grace period) whatever its polls said."""
    if gone and failures >= max_failures:
        return f"the provider job could not be retrieved ({failures} polls failed)"
    if now - started > deadline:
        return "the provider job did not finish within its completion window"
    return None


def now() -> float:
    return time.time()
