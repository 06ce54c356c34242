"""Batch records, statuses and their transitions, queue lines, results and Redis key names."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

Status = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
TERMINAL: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})
TRANSITIONS: dict[str, frozenset[str]] = {
    "validating": frozenset({"in_progress", "failed", "cancelling", "cancelled"}),
    "in_progress": frozenset({"finalizing", "cancelling", "expired"}),
    "finalizing": frozenset({"completed", "expired", "cancelled"}),
    "cancelling": frozenset({"finalizing", "cancelled"}),
}
URLS: dict[str, str] = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings"}
ENDPOINT_URLS: dict[str, str] = {v: k for k, v in URLS.items()}
WINDOW_SECONDS = {"24h": 86400}


def can_move(current: str, target: str) -> bool:
    return target in TRANSITIONS.get(current, frozenset())


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(12).hex()}"


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchRecord(BaseModel):
    """A client batch (or a deferred single request) as stored in Redis and shown by the API."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    input_file_id: str | None = None
    completion_window: str = "24h"
    status: Status = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int = Field(default_factory=lambda: int(time.time()))
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None
    errors: dict[str, Any] | None = None
    tenant: str = Field(default="anonymous", exclude=True)
    deferred: bool = Field(default=False, exclude=True)

    def public(self) -> dict[str, Any]:
        """The OpenAI batch object."""
        return self.model_dump(mode="json")

    def store(self) -> bytes:
        return orjson.dumps(
            {**self.model_dump(mode="json"), "tenant": self.tenant, "deferred": self.deferred}
        )

    @classmethod
    def load(cls, raw: bytes | str) -> BatchRecord:
        return cls.model_validate(orjson.loads(raw))


@dataclass(frozen=True, slots=True)
class Line:
    """One request of a batch, as queued."""

    batch_id: str
    custom_id: str
    endpoint: str  # "chat" | "embeddings"
    body: dict[str, Any]
    tenant: str = "anonymous"
    attempt: int = 1
    # Run it directly (not in a provider job) on its next attempt: a provider job failed it and
    # the queue's policy says `onFailure: direct`.
    direct: bool = False
    # May be answered from, and fill, the exact cache: not a deferred request that carried cache
    # directives or tags (no-store, no-cache, tags a purge must find: the line cache applies
    # none of them).
    cache: bool = True
    # The exact cache's purge fence when this attempt looked the cache up (kept with a provider
    # job's lines, which may run for hours): its answer fills the cache only if no purge
    # started since. None: not read (the answer is not stored).
    fence: str | None = None
    # Not to be run before this time (epoch seconds): a retry backing off after its provider
    # job failed as a whole or could not be submitted. Kept in the stream entry, so a worker
    # that takes the line over honours it too.
    not_before: float | None = None
    # Times the line waited out a provider quota (`token_limit_exceeded`) without an attempt
    # counted: the exponent of its next wait.
    waits: int = 0

    @property
    def route(self) -> str:
        return str(self.body.get("model", ""))

    def fields(self) -> dict[str, bytes | str]:
        return {
            "b": self.batch_id,
            "c": self.custom_id,
            "e": self.endpoint,
            "t": self.tenant,
            "a": str(self.attempt),
            "d": orjson.dumps(self.body),
            **({"x": "1"} if self.direct else {}),
            **({"nc": "1"} if not self.cache else {}),
            **({"nb": repr(self.not_before)} if self.not_before is not None else {}),
            **({"w": str(self.waits)} if self.waits else {}),
        }

    @classmethod
    def from_fields(cls, data: dict[bytes, bytes]) -> Line:
        return cls(
            batch_id=data[b"b"].decode(),
            custom_id=data[b"c"].decode(),
            endpoint=data[b"e"].decode(),
            body=orjson.loads(data[b"d"]),
            tenant=data.get(b"t", b"anonymous").decode(),
            attempt=int(data.get(b"a", b"1")),
            direct=data.get(b"x") == b"1",
            cache=data.get(b"nc") != b"1",
            not_before=float(data[b"nb"]) if b"nb" in data else None,
            waits=int(data.get(b"w", b"0")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "b": self.batch_id,
            "c": self.custom_id,
            "e": self.endpoint,
            "t": self.tenant,
            "a": self.attempt,
            "d": self.body,
            **({"x": True} if self.direct else {}),
            **({"nc": True} if not self.cache else {}),
            **({"f": self.fence} if self.fence is not None else {}),
            **({"w": self.waits} if self.waits else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Line:
        return cls(
            data["b"],
            data["c"],
            data["e"],
            data["d"],
            data["t"],
            int(data["a"]),
            data.get("x", False),
            not data.get("nc", False),
            data.get("f"),
            None,
            int(data.get("w", 0)),
        )

    def fenced(self, fence: str | None) -> Line:
        """This attempt, with the purge fence read at its cache lookup."""
        return dataclasses.replace(self, fence=fence)

    def retried(
        self, direct: bool | None = None, *, not_before: float | None = None, count: bool = True
    ) -> Line:
        """The next attempt (run directly when `direct`; as this one was by default), not run
        before `not_before`; with `count` False the same attempt again, after a wait that is
        not the line's fault (a provider quota)."""
        return Line(
            self.batch_id,
            self.custom_id,
            self.endpoint,
            self.body,
            self.tenant,
            self.attempt + 1 if count else self.attempt,
            self.direct if direct is None else direct,
            self.cache,
            None,  # the next attempt reads the fence again
            not_before,
            0 if count else self.waits + 1,
        )


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one line: an HTTP answer (any status) or an error without one."""

    custom_id: str
    status_code: int | None
    body: dict[str, Any] | None
    error_code: str | None = None
    error_message: str | None = None
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    saved_usd: float = 0.0
    lever: str = "batch"  # the ledger lever its saving goes to ("cache" for a cache hit)
    # answered by the route's primary target (its first, no fallback): only such an answer
    # may fill the exact cache, which is keyed by the primary target
    primary: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def unrun(self) -> bool:
        """Answered without a call: its batch stopped, expired or vanished, or its model is
        unknown. Such a line is no request in the ledger (a cancelled batch's unrun lines
        counted as errors there, and inflated error rates)."""
        code = self.error_code or ""
        return (
            self.status_code is None
            and not self.cost_usd
            and (code.startswith("batch_") or code == "model_not_found")
        )

    def dump(self) -> bytes:
        return orjson.dumps(
            {
                "s": self.status_code,
                "b": self.body,
                "ec": self.error_code,
                "em": self.error_message,
            }
        )

    @classmethod
    def load(cls, custom_id: str, raw: bytes) -> Result:
        data = orjson.loads(raw)
        return cls(custom_id, data["s"], data["b"], data["ec"], data["em"])


class Keys:
    """Redis key names of one queue (`thrifty:batch:<name>:...`)."""

    def __init__(self, name: str) -> None:
        self.prefix = f"thrifty:batch:{name}:"
        self.stream = self.prefix + "lines"
        self.group = "workers"
        self.dead = self.prefix + "dead"
        self.ledger = self.prefix + "ledger"
        self.ledger_group = "gateways"
        # every tenant's batches, written by gateways before 2026-12-08 only: moved into
        # the per-tenant indexes (`tenant_index`) by the next list call
        self.index = self.prefix + "batches"
        self.active = self.prefix + "active"
        self.jobs = self.prefix + "jobs"
        # jobs about to be created at a provider (`RedisQueue.save_intent`), by marker
        self.intents = self.prefix + "intents"
        self.inflight = self.prefix + "inflight"
        self.job_failures = self.prefix + "jobfailures"
        self.provider_files = self.prefix + "providerfiles"  # to delete at the provider

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}batch:{batch_id}"

    def tenant_index(self, tenant: str) -> str:
        """The tenant's batches by creation time (a list reads only its own tenant's)."""
        return f"{self.prefix}tenantbatches:{tenant}"

    def results(self, batch_id: str) -> str:
        return f"{self.prefix}results:{batch_id}"

    def counts(self, batch_id: str) -> str:
        return f"{self.prefix}counts:{batch_id}"

    def job_lines(self, job_id: str) -> str:
        """A provider job's lines (its metadata is in the `jobs` hash)."""
        return f"{self.prefix}joblines:{job_id}"

    def intent_lines(self, marker: str) -> str:
        """The lines of a job about to be created (not under `job_lines`: a sweep of the lines
        of jobs no longer recorded, an older worker's too, would take them)."""
        return f"{self.prefix}intentlines:{marker}"

    def lock(self, name: str) -> str:
        return f"{self.prefix}lock:{name}"
