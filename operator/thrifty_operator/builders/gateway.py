"""LLMGateway -> ConfigMap (rendered config), Deployment, Service, HPA, PDB."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from thrifty_core.api import LLMGateway, SecretKeyRef
from thrifty_core.render import BATCH_FILES_DIR, CAPTURE_DIR, STUDENT_ARTIFACTS_DIR

from . import names
from .common import (
    CONFIG_HASH_ANNOTATION,
    TMP_SIZE,
    Manifest,
    Owner,
    container,
    http_probes,
    metadata,
    pod_spec,
    resources,
    selector_labels,
    short_hash,
)
from .defaults import CONFIG_DIR, CONFIG_FILE, GATEWAY_PORT, SECRETS_DIR, Defaults
from .secrets import secret_volumes

COMPONENT = "thrifty-gateway"


@dataclass(frozen=True)
class GatewayMounts:
    """Storage a gateway pod shares with its batch worker and students."""

    secret_refs: Sequence[SecretKeyRef] = ()
    batch_queue: str | None = None
    students: Sequence[str] = field(default_factory=tuple)
    # The API keys of its causal-lm students' servers. Optional mounts: the DistilledModel's
    # handler generates each one, possibly after this gateway rendered the student (the pod
    # starts meanwhile; the student is not called before it serves).
    student_keys: Sequence[SecretKeyRef] = ()


def build_config_map(owner: Owner, config_yaml: str, config_hash: str) -> Manifest:
    """The rendered gateway config; its hash is also on the pods so they roll on change."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            owner,
            names.gateway_config(owner.name),
            COMPONENT,
            {CONFIG_HASH_ANNOTATION: config_hash},
        ),
        "data": {CONFIG_FILE: config_yaml},
    }


def config_volume(gateway_name: str) -> dict[str, Any]:
    return {
        "name": "config",
        "configMap": {
            "name": names.gateway_config(gateway_name),
            "items": [{"key": CONFIG_FILE, "path": CONFIG_FILE}],
        },
    }


MODEL_CACHE_DIR = "/var/cache/thrifty"  # XDG_CACHE_HOME of the gateway container
MODEL_CACHE_SIZE = "1Gi"
UPLOAD_TMP_SIZE = "2560Mi"


def shared_volumes(mounts: GatewayMounts) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Secrets, the batch file store and the students' capture/artifact volumes."""
    volumes, vmounts = secret_volumes(mounts.secret_refs)
    mounted = {ref.name for ref in mounts.secret_refs}
    for name, key in sorted({(r.name, r.key) for r in mounts.student_keys}):
        if name in mounted:
            continue
        vol = f"student-key-{short_hash(name, 10)}"
        volumes.append(
            {
                "name": vol,
                "secret": {
                    "secretName": name,
                    "defaultMode": 0o440,
                    "optional": True,
                    "items": [{"key": key, "path": key}],
                },
            }
        )
        vmounts.append({"name": vol, "mountPath": f"{SECRETS_DIR}/{name}", "readOnly": True})
    if mounts.batch_queue:
        volumes.append(
            {
                "name": "batch-files",
                "persistentVolumeClaim": {"claimName": names.batch_files(mounts.batch_queue)},
            }
        )
        vmounts.append({"name": "batch-files", "mountPath": BATCH_FILES_DIR})
    for student in sorted(mounts.students):
        vol = f"student-{student}"[:63].rstrip("-")
        claim = names.distill_artifacts(student)
        volumes.append({"name": vol, "persistentVolumeClaim": {"claimName": claim}})
        vmounts.append({"name": vol, "mountPath": f"{CAPTURE_DIR}/{student}", "subPath": "capture"})
        vmounts.append(
            {
                "name": vol,
                "mountPath": f"{STUDENT_ARTIFACTS_DIR}/{student}",
                "subPath": "students",
                "readOnly": True,
            }
        )
    return volumes, vmounts


# A stopping gateway pod keeps serving this long before its process gets SIGTERM (a preStop
# `sleep`, the kubelet's own: no shell needed in the image), while the endpoint controllers,
# kube-proxy and ingresses stop sending it new connections; uvicorn closes its listener at
# SIGTERM, and connections sent meanwhile would be refused.
PRESTOP_SLEEP_SECONDS = 5
# After SIGTERM the gateway (thrifty_gateway/server.py and app.py) gives the requests in flight
# up to its longest route timeout (at least GRACEFUL_MIN_SECONDS), then up to DRAIN_SECONDS for
# their accounting, then closes its stores (CLOSE_SECONDS at most).
GRACEFUL_MIN_SECONDS = 20
DRAIN_SECONDS = 5
CLOSE_SECONDS = 10


def termination_grace_seconds(gateway: LLMGateway) -> int:
    """`terminationGracePeriodSeconds` of a gateway pod: the preStop sleep, then the time the
    gateway takes to finish what is in flight and stop (see above), so that the kubelet does
    not kill a request or a stream that its route still allows."""
    longest = max((r.timeout_seconds for r in gateway.spec.routes), default=0.0)
    graceful = max(GRACEFUL_MIN_SECONDS, math.ceil(longest))
    return PRESTOP_SLEEP_SECONDS + graceful + DRAIN_SECONDS + CLOSE_SECONDS


def build_deployment(
    gateway: LLMGateway,
    owner: Owner,
    config_hash: str,
    mounts: GatewayMounts,
    defaults: Defaults,
) -> Manifest:
    """The gateway Deployment; replicas are left to the HPA when autoscaling is on."""
    spec = gateway.spec
    volumes, vmounts = shared_volumes(mounts)
    volumes.insert(0, config_volume(owner.name))
    vmounts.insert(0, {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
    # The embedding and pair-verifier ONNX graphs (about 90 MB each) are built at start into
    # their own volume, not into the small /tmp.
    volumes.append({"name": "model-cache", "emptyDir": {"sizeLimit": MODEL_CACHE_SIZE}})
    vmounts.append({"name": "model-cache", "mountPath": MODEL_CACHE_DIR})
    main = container(
        "gateway",
        spec.image or defaults.gateway_image,
        args=["gateway", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "--host", "0.0.0.0"],
        ports=[{"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"}],
        env=[{"name": "XDG_CACHE_HOME", "value": MODEL_CACHE_DIR}],
        mounts=vmounts,
        resources_block=resources(spec.resources.requests, spec.resources.limits),
        probes=http_probes("http", "/healthz", "/readyz"),
    )
    main["lifecycle"] = {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}}
    # Uploads over 1 MB are spooled to /tmp while a batch input file is received: room for the
    # largest file a queue may accept (maxFileBytes <= 2 GiB).
    template_spec = pod_spec(
        [main],
        volumes=volumes,
        tmp_size=UPLOAD_TMP_SIZE if mounts.batch_queue else TMP_SIZE,
    )
    template_spec["terminationGracePeriodSeconds"] = termination_grace_seconds(gateway)
    deploy_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(owner, COMPONENT)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        },
        "template": {
            "metadata": {
                "labels": metadata(owner, "", COMPONENT)["labels"],
                "annotations": {CONFIG_HASH_ANNOTATION: config_hash},
            },
            "spec": template_spec,
        },
    }
    if not spec.autoscaling.enabled:
        deploy_spec["replicas"] = spec.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, names.gateway(owner.name), COMPONENT),
        "spec": deploy_spec,
    }


def build_service(owner: Owner) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, names.gateway(owner.name), COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner, COMPONENT),
            "ports": [{"name": "http", "port": GATEWAY_PORT, "targetPort": "http"}],
        },
    }


def build_hpa(gateway: LLMGateway, owner: Owner) -> Manifest | None:
    """An autoscaling/v2 HPA on CPU, or None when autoscaling is off."""
    auto = gateway.spec.autoscaling
    if not auto.enabled:
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(owner, names.gateway(owner.name), COMPONENT),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": names.gateway(owner.name),
            },
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": auto.target_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }


def build_pdb(gateway: LLMGateway, owner: Owner) -> Manifest | None:
    """A policy/v1 PodDisruptionBudget, or None when not asked for."""
    pdb = gateway.spec.pod_disruption_budget
    if not pdb.enabled:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(owner, names.gateway(owner.name), COMPONENT),
        "spec": {
            "minAvailable": pdb.min_available,
            "selector": {"matchLabels": selector_labels(owner, COMPONENT)},
        },
    }


# The field manager that keeps `spec.replicas` while the HPA takes it over (see below).
REPLICAS_HANDOVER = "thrifty-operator-replicas-handover"


def owns_replicas(deployment: Mapping[str, Any] | None, manager: str) -> bool:
    """Whether `manager` applied `spec.replicas` of the live Deployment."""
    for entry in (deployment or {}).get("metadata", {}).get("managedFields") or ():
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        if "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {}):
            return True
    return False


def replicas_handover(deployment: Mapping[str, Any]) -> Manifest:
    """The live replica count, applied under `REPLICAS_HANDOVER`, before the operator stops
    setting it (autoscaling turned on). Dropping a field from an apply removes it when its
    manager was its only owner, and `spec.replicas` fell back to 1: a gateway at 6 pods
    dropped to one until the HPA's next sync. With a second owner it stays, and the HPA takes
    it from there (Kubernetes' documented ownership transfer)."""
    meta = deployment["metadata"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "spec": {"replicas": deployment.get("spec", {}).get("replicas", 1)},
    }
