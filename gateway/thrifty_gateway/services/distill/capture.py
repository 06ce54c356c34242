"""Capture of teacher answers on a student's route into the dataset store.

Sampled by `capture.sampleRate`, capped at `capture.maxExamples` records (`whenFull: rotate`,
the default, drops the oldest shards to go on recording; `stop` records no more), skipped when the
client sends `x-thrifty-no-capture` (any value but "0"/"false") or `Cache-Control: no-store`
(the client asked that its exchange be kept nowhere) or its tenant is not in
`capture.tenants` (when that list is set), redacted by default. Every record names its
tenant. When
`capture.logprobs` is on, sampled requests ask the teacher for `logprobs`/`top_logprobs`
(unless the client already did) so the student learns the teacher's distribution: in the
upstream payload only, so the cache key stays the client's request, and the gateway nulls
them in the answer the client and the caches get (the capture reads `outcome.upstream_body`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from thrifty_core.api.distilledmodel import Capture
from thrifty_core.student.capture import NO_CAPTURE_HEADER, build_record
from thrifty_core.student.redact import Redactor, no_redaction, redact
from thrifty_core.student.store import DatasetStore, FileDatasetStore

from ..cache.eligibility import parse_directives

log = logging.getLogger(__name__)

TOP_LOGPROBS = 5
REFRESH_SECONDS = 10.0  # how often a sink counts every replica's records, below its cap


def opted_out(headers: Mapping[str, str]) -> bool:
    value = headers.get(NO_CAPTURE_HEADER)
    if value is not None and value.strip().lower() not in ("0", "false", "no"):
        return True
    return parse_directives(headers).no_store


class CaptureSink:
    """Decides per request whether to capture, and appends records off the event loop."""

    def __init__(
        self,
        store: DatasetStore,
        spec: Capture,
        *,
        route: str,
        student: str,
        redactor: Redactor | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.spec = spec
        self.route = route
        self.student = student
        self.redactor = redactor or (redact if spec.redact else no_redaction)
        self.rand = rand
        self.tenants = frozenset(spec.tenants)
        self.written = 0
        self.full = False
        self._refreshed = 0.0  # monotonic time of the last full count (other replicas write)

    @classmethod
    def to_directory(
        cls, directory: str, spec: Capture, *, route: str, student: str
    ) -> CaptureSink:
        # Shards of a tenth of the cap: rotation drops a tenth at a time, and never the only
        # shard (the one being written).
        per_shard = max(10, min(10_000, spec.max_examples // 10))
        store = FileDatasetStore(Path(directory), shard_records=per_shard)
        return cls(store, spec, route=route, student=student)

    def wants(self, headers: Mapping[str, str], tenant: str) -> bool:
        if self.full or opted_out(headers):
            return False
        if self.tenants and tenant not in self.tenants:
            return False
        return self.spec.sample_rate >= 1 or self.rand() < self.spec.sample_rate

    def logprobs_request(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The fields that make the teacher return its token distribution, for the upstream
        payload only (empty when capture does not want logprobs or the client chose)."""
        if self.spec.logprobs and "logprobs" not in body:
            return {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
        return {}

    async def record(
        self,
        *,
        request_id: str,
        ts: float,
        tenant: str,
        model: str,
        messages: list[dict[str, Any]],
        completion: dict[str, Any] | None,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        source: Literal["teacher", "evaluation"] = "teacher",
    ) -> bool:
        record = build_record(
            request_id=request_id,
            ts=ts,
            route=self.route,
            student=self.student,
            tenant=tenant,
            model=model,
            messages=messages,
            completion=completion,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost_usd,
            redactor=self.redactor,
            source=source,
            keep_logprobs=self.spec.logprobs,
        )
        if record is None:
            return False
        line = record.model_dump_json(exclude_none=True).encode()
        written, count = await asyncio.to_thread(self._append, line)
        if count >= self.spec.max_examples and self.spec.when_full == "stop":
            if not self.full:
                log.info("capture for %s reached its cap of %d", self.student, count)
            self.full = True
        return written

    def _append(self, line: bytes) -> tuple[bool, int]:
        """(whether the line was stored, the count after). At the cap, `rotate` drops the
        oldest shards first (never the one being written); `stop` stores nothing more."""
        cap = self.spec.max_examples
        now = time.monotonic()
        if now - self._refreshed >= REFRESH_SECONDS or self.store.count() >= cap:
            # Replicas sharing the volume append and drop too: count what is on disk (an
            # incremental read of what was appended since) before deciding.
            self._refreshed = now
            self.store.refresh()
        if self.store.count() >= cap and self.spec.when_full == "rotate":
            while self.store.count() >= cap and self.store.drop_oldest() > 0:
                pass
        if self.store.count() >= cap:
            return False, self.store.count()
        self.store.append([line])
        self.written += 1
        return True, self.store.count()
