"""Shared pieces of every manifest: names, labels, owner references, hardened pods.

Everything here is a pure function of its arguments: no API calls, no clock, no randomness, so
the same spec always gives the same manifest (server-side apply then has nothing to change).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Manifest = dict[str, Any]

MANAGED_BY = "thrifty-operator"
PART_OF = "thrifty"
CONFIG_HASH_ANNOTATION = "thrifty.dev/config-hash"
OWNER_KIND_LABEL = "thrifty.dev/owner-kind"
OWNER_NAME_LABEL = "thrifty.dev/owner-name"

RUN_AS_USER = 10001
TMP_VOLUME = "tmp"


@dataclass(frozen=True)
class Owner:
    """The custom resource a child belongs to (enough for labels and an owner reference)."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str

    @property
    def ident(self) -> str:
        """`namespace/name`: how gateways name a CachePolicy's entries (its points' `policy`)."""
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Owner:
        meta = body.get("metadata", {})
        return cls(
            api_version=str(body.get("apiVersion", "")),
            kind=str(body.get("kind", "")),
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "default")),
            uid=str(meta.get("uid", "")),
        )


def short_hash(data: Any, length: int = 16) -> str:
    """A stable hex digest of JSON-serialisable data (keys sorted) or of a string."""
    raw = data if isinstance(data, str) else json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:length]


def selector_labels(owner: Owner, component: str) -> dict[str, str]:
    """Labels that select a component's pods: stable for the life of the owner."""
    return {
        "app.kubernetes.io/name": component,
        "app.kubernetes.io/instance": owner.name,
    }


def labels(owner: Owner, component: str) -> dict[str, str]:
    """Recommended labels plus the owner's kind and name (used to find children)."""
    return {
        **selector_labels(owner, component),
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        OWNER_KIND_LABEL: owner.kind.lower(),
        OWNER_NAME_LABEL: owner.name,
    }


def owner_reference(owner: Owner) -> dict[str, Any]:
    """A controller owner reference: garbage collection deletes the child with its owner."""
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    owner: Owner, name: str, component: str, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    """Metadata of a namespaced child: name, namespace, labels, owner reference."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, component),
        "ownerReferences": [owner_reference(owner)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def pod_security_context() -> dict[str, Any]:
    """Pod-level settings required by the `restricted` Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Container-level settings of the `restricted` standard, plus a read-only root."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


TMP_SIZE = "256Mi"  # the writable /tmp of a container on its read-only root


def tmp_volume(size: str = TMP_SIZE) -> dict[str, Any]:
    """A small writable /tmp for processes that need one on a read-only root."""
    return {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": size}}


def tmp_mount() -> dict[str, Any]:
    return {"name": TMP_VOLUME, "mountPath": "/tmp"}


def resources(requests: dict[str, str], limits: dict[str, str]) -> dict[str, Any]:
    """A container resources block, omitting empty halves."""
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = dict(requests)
    if limits:
        out["limits"] = dict(limits)
    return out


def container(
    name: str,
    image: str,
    *,
    args: list[str] | None = None,
    command: list[str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    env: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
    resources_block: dict[str, Any] | None = None,
    probes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A hardened container: the restricted security context and a writable /tmp."""
    out: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "securityContext": container_security_context(),
        "volumeMounts": [tmp_mount(), *(mounts or [])],
    }
    if command:
        out["command"] = list(command)
    if args:
        out["args"] = list(args)
    if ports:
        out["ports"] = list(ports)
    if env:
        out["env"] = list(env)
    if resources_block:
        out["resources"] = resources_block
    if probes:
        out.update(probes)
    return out


def pod_spec(
    containers: list[dict[str, Any]],
    *,
    volumes: list[dict[str, Any]] | None = None,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    restart_policy: str | None = None,
    service_account: str | None = None,
    tmp_size: str = TMP_SIZE,
) -> dict[str, Any]:
    """A pod spec meeting the restricted standard; no service account token unless asked."""
    spec: dict[str, Any] = {
        "securityContext": pod_security_context(),
        "automountServiceAccountToken": service_account is not None,
        "enableServiceLinks": False,
        "containers": containers,
        "volumes": [tmp_volume(tmp_size), *(volumes or [])],
    }
    if service_account:
        spec["serviceAccountName"] = service_account
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        spec["tolerations"] = list(tolerations)
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    return spec


def http_probes(port: str, live_path: str, ready_path: str) -> dict[str, Any]:
    """Liveness and readiness HTTP probes on a named port."""
    return {
        "livenessProbe": {
            "httpGet": {"path": live_path, "port": port},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": ready_path, "port": port},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
    }
