"""BatchQueue: deferred work through provider Batch APIs or bounded direct calls."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .base import (
    QUANTITY,
    ApiModel,
    CommonStatus,
    PrinterColumn,
    Resource,
    Resources,
    cel,
    with_cel,
)


class BatchLimits(ApiModel):
    """Input limits enforced when a batch is created."""

    max_lines_per_batch: int = Field(
        default=50_000, ge=1, le=1_000_000, description="Lines per client batch file."
    )
    max_file_bytes: int = Field(
        default=200 * 1024 * 1024,
        ge=1024,
        le=2 * 1024 * 1024 * 1024,
        description="Size of an uploaded input file.",
    )
    max_lines_per_job: int = Field(
        default=50_000, ge=1, le=1_000_000, description="Lines per provider batch job."
    )
    max_bytes_per_job: int = Field(
        default=100 * 1024 * 1024,
        ge=1024,
        le=2 * 1024 * 1024 * 1024,
        description="Bytes per provider batch job.",
    )


class RetryPolicy(ApiModel):
    """What happens to lines that fail or expire."""

    max_attempts: int = Field(
        default=3, ge=1, le=20, description="Attempts per line before it is dead-lettered."
    )
    on_failure: Literal["resubmit", "direct"] = Field(
        default="resubmit",
        description="resubmit puts failed lines in the next provider job; direct calls them "
        "one by one.",
    )
    backoff_seconds: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="Wait before a line's next attempt after its provider job failed as a whole "
        "or could not be submitted; doubles per attempt (with jitter) up to maxBackoffSeconds.",
    )
    max_backoff_seconds: int = Field(
        default=900,
        ge=1,
        le=86_400,
        description="Longest wait between two attempts of a line.",
    )

    model_config = with_cel(
        cel(
            "self.backoffSeconds <= self.maxBackoffSeconds",
            "backoffSeconds must be <= maxBackoffSeconds",
        )
    )

    @model_validator(mode="after")
    def _backoff(self) -> RetryPolicy:
        if self.backoff_seconds > self.max_backoff_seconds:
            raise ValueError("backoffSeconds must be <= maxBackoffSeconds")
        return self


class DirectLimits(ApiModel):
    """Bounds for direct mode (and for direct retries)."""

    concurrency: int = Field(default=8, ge=1, le=1024, description="Calls in flight.")
    requests_per_minute: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Upstream request rate cap."
    )
    tokens_per_minute: int | None = Field(
        default=None, ge=1, le=1_000_000_000, description="Upstream token rate cap."
    )


class Worker(ApiModel):
    """The batch worker Deployment."""

    replicas: int = Field(default=1, ge=0, le=100, description="Worker pods.")
    image: str | None = Field(default=None, max_length=512, description="Worker image override.")
    resources: Resources = Field(default_factory=Resources, description="Worker pod resources.")


class FileStore(ApiModel):
    """Where batch input, output and error files live."""

    type: Literal["filesystem"] = Field(
        default="filesystem", description="filesystem (a PVC shared by gateway and worker)."
    )
    size: str = Field(default="10Gi", pattern=QUANTITY, description="PVC size.")
    storage_class_name: str | None = Field(
        default=None, max_length=253, description="StorageClass of the PVC."
    )
    max_total_bytes: int = Field(
        default=10 * 1024**3, ge=1024**2, le=10 * 1024**4, description="Store size limit."
    )


class BatchQueueSpec(ApiModel):
    """Desired batching behaviour."""

    mode: Literal["provider", "direct"] = Field(
        default="provider",
        description="provider packs lines into provider batch jobs; direct calls the route with "
        "bounded concurrency.",
    )
    completion_window: Literal["24h"] = Field(
        default="24h", description="Completion window requested from the provider."
    )
    flush_window_seconds: int = Field(
        default=60, ge=1, le=86400, description="Longest a line waits before a job is packed."
    )
    poll_interval_seconds: int = Field(
        default=30, ge=1, le=3600, description="Initial provider job polling interval."
    )
    limits: BatchLimits = Field(default_factory=BatchLimits, description="Input limits.")
    retries: RetryPolicy = Field(default_factory=RetryPolicy, description="Retry policy.")
    direct: DirectLimits = Field(default_factory=DirectLimits, description="Direct mode bounds.")
    dead_letter: bool = Field(
        default=True, description="Move lines out of attempts to a dead-letter stream."
    )
    worker: Worker = Field(default_factory=Worker, description="Worker Deployment.")
    file_store: FileStore = Field(default_factory=FileStore, description="File store.")

    model_config = with_cel(
        cel(
            "self.limits.maxLinesPerJob <= self.limits.maxLinesPerBatch || self.mode == 'direct'",
            "limits.maxLinesPerJob must be <= limits.maxLinesPerBatch",
            ".limits.maxLinesPerJob",
        )
    )


class BatchQueueStatus(CommonStatus):
    """Observed state of a batch queue."""

    worker_replicas: int = Field(default=0, ge=0, description="Ready worker pods.")
    stream: str = Field(default="", description="Redis stream the queue uses.")
    gateway: str = Field(
        default="",
        description="The LLMGateway this queue serves (the oldest one referencing it); its "
        "worker runs that gateway's config. Other gateways referencing the queue are refused "
        "(their BatchQueueReady condition says BatchQueueInUse).",
    )


class BatchQueue(Resource):
    """A durable queue for deferrable work."""

    kind_name: ClassVar[str] = "BatchQueue"
    plural: ClassVar[str] = "batchqueues"
    singular: ClassVar[str] = "batchqueue"
    short_names: ClassVar[tuple[str, ...]] = ("bq",)
    description: ClassVar[str] = (
        "BatchQueue declares how deferrable work runs: provider Batch APIs or bounded direct calls."
    )
    extra_columns: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn(name="Mode", type="string", json_path=".spec.mode"),
        PrinterColumn(name="Workers", type="integer", json_path=".status.workerReplicas"),
        PrinterColumn(name="Gateway", type="string", json_path=".status.gateway"),
    )

    kind: Literal["BatchQueue"] = Field(default="BatchQueue", description="Resource kind.")
    spec: BatchQueueSpec = Field(default_factory=BatchQueueSpec, description="Desired state.")
    status: BatchQueueStatus | None = Field(default=None, description="Observed state.")
