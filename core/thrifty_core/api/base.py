"""Building blocks shared by every custom resource: the base model, references, conditions.

Field names follow Kubernetes conventions (camelCase on the wire); Python code uses snake_case
through an alias generator. Every field carries a description: the CRD generator copies it into
the OpenAPI schema so that `kubectl explain` teaches the API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "thrifty.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$"
# A Kubernetes quantity that is not negative ("500m", "1Gi", "1.5"): "-1Gi" and "1..5Gi"
# passed the looser pattern, and the apply of the child then failed half-way.
QUANTITY = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# URLs carry no credentials (no `user:password@` in the authority, no query string or fragment,
# where `?api_key=` would sit): those go in Secret refs, since URLs are copied into ConfigMaps
# and status. (Azure's api-version has a field of its own.) A Redis URL takes no query string
# either: redis-py reads `?password=` from it.
HTTP_URL = r"^https?://[^\s/@?#]+(/[^\s?#]*)?$"
REDIS_URL = r"^rediss?://[^\s/@?]+(/[^\s?]*)?$"

Name = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]


def list_map(*keys: str) -> dict[str, Any]:
    """Schema markers for a list keyed by `keys` (the API server enforces their uniqueness)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


class ApiModel(BaseModel):
    """Base of every API type: camelCase aliases, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )


class SecretKeyRef(ApiModel):
    """A key in a Secret in the same namespace. Secrets are only ever referenced, never inlined."""

    name: Name = Field(description="Name of the Secret in the resource's namespace.")
    key: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key inside the Secret whose value is used.",
    )


class LocalObjectRef(ApiModel):
    """A reference to another Thrifty resource in the same namespace."""

    name: Name = Field(description="Name of the referenced resource in the same namespace.")


class Toleration(ApiModel):
    """A Kubernetes pod toleration (see core/v1 Toleration)."""

    key: str | None = Field(default=None, max_length=253, description="Taint key to tolerate.")
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal", description="Exists matches any value; Equal matches `value`."
    )
    value: str | None = Field(default=None, max_length=63, description="Taint value to match.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty tolerates all effects."
    )


class Resources(ApiModel):
    """Compute resources for a container, as Kubernetes quantities."""

    requests: dict[str, Annotated[str, Field(pattern=QUANTITY)]] = Field(
        default_factory=dict,
        description="Minimum resources, e.g. {cpu: 250m, memory: 256Mi}.",
    )
    limits: dict[str, Annotated[str, Field(pattern=QUANTITY)]] = Field(
        default_factory=dict, description="Maximum resources, e.g. {memory: 1Gi}."
    )


class GpuSpec(ApiModel):
    """GPU placement for a workload."""

    count: int = Field(default=1, ge=0, le=16, description="nvidia.com/gpu units per pod.")
    product: str | None = Field(
        default=None,
        max_length=128,
        description="Required value of the node label nvidia.com/gpu.product, if any.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Extra node labels the pods must match."
    )
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [
            Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
        ],
        max_length=16,
        description="Tolerations for tainted GPU nodes (defaults to the nvidia.com/gpu taint).",
    )


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """An observation of one aspect of the resource, following Kubernetes API conventions."""

    type: str = Field(
        max_length=316,
        pattern=r"^[A-Z][A-Za-z0-9]*$",
        description="Condition type, e.g. Ready.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="One CamelCase word saying why the condition is in this state.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    observed_generation: int = Field(
        default=0, ge=0, description="The .metadata.generation the condition was set from."
    )
    last_transition_time: datetime = Field(
        description="When the status of this condition last changed."
    )


class CommonStatus(ApiModel):
    """Status fields every Thrifty resource has."""

    observed_generation: int = Field(
        default=0, ge=0, description="The .metadata.generation the operator last reconciled."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=32,
        description="Current conditions; Ready summarises the others.",
        json_schema_extra=list_map("type"),
    )


class PrinterColumn(ApiModel):
    """A kubectl printer column for a CRD."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str = ""
    priority: int = 0


READY_COLUMNS: tuple[PrinterColumn, ...] = (
    PrinterColumn(
        name="Ready",
        type="string",
        json_path='.status.conditions[?(@.type=="Ready")].status',
        description="Whether the resource is ready.",
    ),
    PrinterColumn(
        name="Reason",
        type="string",
        json_path='.status.conditions[?(@.type=="Ready")].reason',
        description="Why the resource is (not) ready.",
    ),
)
AGE_COLUMN = PrinterColumn(name="Age", type="date", json_path=".metadata.creationTimestamp")


class ObjectMeta(ApiModel):
    """The subset of metadata Thrifty reads from its resources."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(default="", description="Resource name.")
    namespace: str = Field(default="default", description="Resource namespace.")
    generation: int = Field(default=0, description="Spec generation.")


class Resource(ApiModel):
    """A custom resource: subclasses set the kind metadata and the spec/status types."""

    kind_name: ClassVar[str]
    plural: ClassVar[str]
    singular: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]
    extra_columns: ClassVar[tuple[PrinterColumn, ...]] = ()
    description: ClassVar[str]

    api_version: Literal["thrifty.dev/v1alpha1"] = Field(
        default="thrifty.dev/v1alpha1", description="API version."
    )
    kind: str = Field(description="Resource kind.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard metadata.")

    @classmethod
    def parse_object(cls, obj: dict[str, Any]) -> Resource:
        """Validate a manifest (as read from the API server or a YAML file)."""
        return cls.model_validate(obj)


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One CEL rule enforced by the API server (x-kubernetes-validations)."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def with_cel(*rules: dict[str, str]) -> ConfigDict:
    """Model config carrying CEL rules; pydantic merges it with the parent's config."""
    extra: dict[str, Any] = {"x-kubernetes-validations": list(rules)}
    return ConfigDict(json_schema_extra=extra)


# Children are named `<name>-<suffix>` (Services, Jobs whose name becomes a pod label, a
# StatefulSet whose pod label adds a 10-character revision hash): a DNS-1035 label of at most
# 40 characters keeps every derived name a valid Service name and label value.
MAX_NAME_LENGTH = 40
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# Checked when an object is created only (`oldSelf` has a value on every later write): an
# object created before the rule, whose name may still work, must stay updatable and
# deletable (its status, its finalizer).
NAME_RULE: dict[str, Any] = {
    **cel(
        f"oldSelf.hasValue() || (size(self.metadata.name) <= {MAX_NAME_LENGTH}"
        f" && self.metadata.name.matches('{NAME_PATTERN}'))",
        f"metadata.name must be at most {MAX_NAME_LENGTH} lowercase letters, digits and '-', "
        "starting with a letter (the operator names Services and Jobs after it)",
    ),
    "optionalOldSelf": True,
}
