"""DistilledModel: capture teacher answers, train and gate a student, serve it, route to it."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .base import (
    MODEL_NAME,
    QUANTITY,
    ApiModel,
    CommonStatus,
    GpuSpec,
    LocalObjectRef,
    Name,
    PrinterColumn,
    Resource,
    Resources,
    cel,
    with_cel,
)


class Teacher(ApiModel):
    """The gateway route whose answers teach the student."""

    gateway_ref: LocalObjectRef = Field(description="LLMGateway serving the teacher route.")
    route: str = Field(
        min_length=1, max_length=128, pattern=MODEL_NAME, description="Route (public model name)."
    )


class Student(ApiModel):
    """What kind of student to train."""

    kind: Literal["classifier", "causal-lm"] = Field(
        description="classifier: embeddings + trained head over a label set; causal-lm: LoRA "
        "fine-tune of a small chat model served by vLLM."
    )
    base_model: str | None = Field(
        default=None,
        max_length=256,
        description="Base model: the embedding model for classifier (default all-MiniLM-L6-v2), "
        "a chat model for causal-lm (required).",
    )
    labels: list[str] = Field(
        default_factory=list,
        max_length=4096,
        description="Declared label set for classifier students; empty discovers labels from "
        "teacher answers.",
    )

    model_config = with_cel(
        cel(
            "self.kind != 'causal-lm' || has(self.baseModel)",
            "a causal-lm student needs baseModel",
            ".baseModel",
        )
    )


class Capture(ApiModel):
    """How teacher answers are recorded."""

    sample_rate: float = Field(
        default=1.0, ge=0, le=1, description="Share of teacher answers recorded."
    )
    max_examples: int = Field(
        default=200_000, ge=100, le=100_000_000, description="Cap on stored examples."
    )
    when_full: Literal["rotate", "stop"] = Field(
        default="rotate",
        description="At maxExamples: rotate drops the oldest captured examples to keep "
        "recording (the next training run learns from recent traffic); stop records no more.",
    )
    logprobs: bool = Field(
        default=False, description="Ask the teacher for token log-probabilities (soft labels)."
    )
    redact: bool = Field(
        default=True, description="Redact emails, phone and card numbers before storing."
    )
    tenants: list[Name] = Field(
        default_factory=list,
        max_length=256,
        description="Only requests of these gateway tenants are recorded (a causal-lm student "
        "can repeat what it was trained on); empty records every tenant.",
    )


class Training(ApiModel):
    """Training Job settings."""

    min_examples: int = Field(
        default=1000, ge=10, le=100_000_000, description="Examples needed before training."
    )
    epochs: int = Field(default=3, ge=1, le=1000, description="Training epochs.")
    learning_rate: float = Field(default=0.001, gt=0, le=1, description="Learning rate.")
    resources: Resources = Field(default_factory=Resources, description="Training pod resources.")
    gpu: GpuSpec | None = Field(default=None, description="GPUs for training (causal-lm).")
    node_price_per_hour: float = Field(
        default=0.0, ge=0, le=10000, description="Node price used to cost the training run (USD)."
    )


class Evaluation(ApiModel):
    """The gate a student must pass before it serves traffic."""

    held_out_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="Share of captured examples held out."
    )
    min_agreement: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Minimum agreement with the teacher over all traffic, fallback counted.",
    )
    min_coverage: float = Field(
        default=0.5, ge=0, le=1, description="Minimum share the student answers on its own."
    )


class Serving(ApiModel):
    """The student's serving Deployment."""

    replicas: int = Field(default=1, ge=0, le=100, description="Serving pods (causal-lm).")
    image: str | None = Field(default=None, max_length=512, description="Serving image override.")
    resources: Resources = Field(default_factory=Resources, description="Serving pod resources.")
    gpu: GpuSpec = Field(default_factory=GpuSpec, description="GPUs for serving (causal-lm).")
    cost_per_hour: float = Field(
        default=0.0, ge=0, le=10000, description="Serving cost in USD per hour, for the ledger."
    )
    startup_timeout_seconds: int = Field(
        default=1800,
        ge=60,
        le=86400,
        description="How long a serving pod may take to start (vLLM answers its health check "
        "only once the base model is downloaded and loaded) before it is restarted; the "
        "liveness and readiness checks start after that.",
    )
    version: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Pin a trained artifact version (rollback); default the latest that passed. "
        "Only a version listed in status.passedVersions is served: any other pin is refused "
        "(Serving=False, reason InvalidPin) and the active version keeps serving.",
    )


class Artifacts(ApiModel):
    """The artifacts volume (a PVC shared by the gateways, the Jobs and the student server)."""

    model_config = with_cel(
        cel(
            "has(self.storageClassName) == has(oldSelf.storageClassName)"
            " && (!has(self.storageClassName)"
            " || self.storageClassName == oldSelf.storageClassName)",
            "artifacts.storageClassName cannot change (a PVC's class is fixed once created)",
            ".storageClassName",
        )
    )

    size: str = Field(
        default="10Gi",
        pattern=QUANTITY,
        description="PVC size. It holds the captured examples, a training snapshot per run, "
        "every trained version and the Hugging Face cache of the train and evaluate Jobs (a "
        "causal-lm base model takes several GB). It can grow where the StorageClass allows "
        "volume expansion, never shrink.",
    )
    storage_class_name: str | None = Field(
        default=None,
        max_length=253,
        description="StorageClass of the PVC (default: the cluster's default class).",
    )


class Routing(ApiModel):
    """How traffic moves to the student."""

    mode: Literal["shadow", "canary", "active"] = Field(
        default="shadow",
        description="shadow: teacher answers, student measured; canary: a percentage; active: "
        "all eligible traffic.",
    )
    confidence_threshold: float = Field(
        default=0.7, ge=0, le=1, description="Below this the teacher answers instead."
    )
    canary_percent: int = Field(
        default=10, ge=0, le=100, description="Share of traffic for mode canary."
    )
    evaluation_sample_rate: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Share of student answers also sent to the teacher to track agreement.",
    )
    timeout_ms: int = Field(
        default=2000,
        ge=10,
        le=60000,
        description="How long the gateway waits for the student's answer before the teacher "
        "answers instead. After 5 failures in a row (errors or timeouts) the gateway stops "
        "asking the student for 30 s, then tries one request.",
    )


class DistilledModelSpec(ApiModel):
    """Desired distillation loop."""

    teacher: Teacher = Field(description="Teacher route.")
    student: Student = Field(description="Student kind and base model.")
    capture: Capture = Field(default_factory=Capture, description="Capture settings.")
    training: Training = Field(default_factory=Training, description="Training settings.")
    evaluation: Evaluation = Field(default_factory=Evaluation, description="Evaluation gate.")
    serving: Serving = Field(default_factory=Serving, description="Serving settings.")
    routing: Routing = Field(default_factory=Routing, description="Routing settings.")
    artifacts: Artifacts = Field(
        default_factory=Artifacts, description="The artifacts volume (size, StorageClass)."
    )

    @model_validator(mode="after")
    def _lm_needs_base(self) -> DistilledModelSpec:
        if self.student.kind == "causal-lm" and not self.student.base_model:
            raise ValueError("a causal-lm student needs student.baseModel")
        return self


class DistilledModelStatus(CommonStatus):
    """Observed state of a distillation loop."""

    examples: int = Field(
        default=0,
        ge=0,
        description="Captured examples the latest evaluated run had (training plus held-out).",
    )
    active_version: str = Field(default="", description="Artifact version serving traffic.")
    candidate_version: str = Field(default="", description="Latest trained artifact version.")
    passed_versions: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="Versions that passed their evaluation gate, newest last (at most 20): the "
        "versions spec.serving.version may pin.",
    )
    jobs: list[str] = Field(
        default_factory=list,
        max_length=4,
        description="The train and evaluate Jobs of the current spec; those of an earlier spec "
        "are deleted when it changes.",
    )
    agreement: float | None = Field(
        default=None, ge=0, le=1, description="Latest measured agreement with the teacher."
    )
    coverage: float | None = Field(
        default=None, ge=0, le=1, description="Share of requests the student answers."
    )
    endpoint: str = Field(default="", description="In-cluster URL of the student server.")


class DistilledModel(Resource):
    """A student model distilled from a teacher route."""

    kind_name: ClassVar[str] = "DistilledModel"
    plural: ClassVar[str] = "distilledmodels"
    singular: ClassVar[str] = "distilledmodel"
    short_names: ClassVar[tuple[str, ...]] = ("dm", "distilled")
    description: ClassVar[str] = (
        "DistilledModel trains a student from a teacher route's answers and routes traffic to it "
        "once it passes its evaluation gate."
    )
    extra_columns: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn(name="Student", type="string", json_path=".spec.student.kind"),
        PrinterColumn(name="Mode", type="string", json_path=".spec.routing.mode"),
        PrinterColumn(name="Version", type="string", json_path=".status.activeVersion"),
        PrinterColumn(name="Agreement", type="number", json_path=".status.agreement", priority=1),
    )

    kind: Literal["DistilledModel"] = Field(default="DistilledModel", description="Resource kind.")
    spec: DistilledModelSpec = Field(description="Desired state.")
    status: DistilledModelStatus | None = Field(default=None, description="Observed state.")
