"""DistilledModel -> artifacts PVC, train and evaluate Jobs, report ConfigMap, GPU serving.

The pipeline is driven by facts the API server holds: a Job's Complete/Failed condition and the
evaluation report the evaluate Job writes into a ConfigMap the operator pre-creates (its
ServiceAccount may patch that one ConfigMap and nothing else).
"""

from __future__ import annotations

import json
from typing import Any

from thrifty_core.api import DistilledModel
from thrifty_core.api.base import GpuSpec

from . import names
from .common import (
    Manifest,
    Owner,
    container,
    metadata,
    pod_spec,
    resources,
    selector_labels,
    short_hash,
)
from .defaults import ARTIFACTS_DIR, STUDENT_PORT, Defaults
from .stores import pvc

TRAIN_COMPONENT = "thrifty-distill-train"
EVAL_COMPONENT = "thrifty-distill-eval"
SERVE_COMPONENT = "thrifty-student"
ARTIFACTS_COMPONENT = "thrifty-distill-artifacts"
REPORT_KEY = "report.json"
ARTIFACTS_SIZE = "10Gi"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


def candidate_version(model: DistilledModel) -> str:
    """The artifact version a spec trains: a digest of everything that changes the student."""
    spec = model.spec
    basis = {
        "teacher": spec.teacher.model_dump(mode="json"),
        "student": spec.student.model_dump(mode="json"),
        "training": spec.training.model_dump(mode="json", exclude={"resources", "gpu"}),
    }
    return f"v{short_hash(basis, 8)}"


def gpu_placement(
    gpu: GpuSpec | None, requests: dict[str, str], limits: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str], list[dict[str, Any]]]:
    """Resources with nvidia.com/gpu, a node selector and tolerations for a GPU pod."""
    if gpu is None or gpu.count == 0:
        return resources(requests, limits), {}, []
    limits = {**limits, GPU_RESOURCE: str(gpu.count)}
    requests = {**requests, GPU_RESOURCE: str(gpu.count)}
    selector = dict(gpu.node_selector)
    if gpu.product:
        selector[GPU_PRODUCT_LABEL] = gpu.product
    tolerations = [t.model_dump(mode="json", exclude_none=True) for t in gpu.tolerations]
    return resources(requests, limits), selector, tolerations


def build_artifacts_pvc(owner: Owner) -> Manifest:
    """Capture shards (written by gateways) and trained versions (written by Jobs)."""
    return pvc(
        owner, names.distill_artifacts(owner.name), ARTIFACTS_COMPONENT, ARTIFACTS_SIZE, None
    )


def build_report_access(owner: Owner, version: str) -> list[Manifest]:
    """The empty report ConfigMap and a ServiceAccount allowed to patch exactly that one."""
    report = names.eval_report(owner.name, version)
    account = names.distill_service_account(owner.name)
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(owner, report, EVAL_COMPONENT),
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(owner, account, EVAL_COMPONENT),
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata(owner, account, EVAL_COMPONENT),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [report],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(owner, account, EVAL_COMPONENT),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": account,
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": owner.namespace}],
        },
    ]


def _job(
    model: DistilledModel,
    owner: Owner,
    defaults: Defaults,
    *,
    name: str,
    component: str,
    args: list[str],
    service_account: str | None = None,
) -> Manifest:
    training = model.spec.training
    res, selector, tolerations = gpu_placement(
        training.gpu, training.resources.requests, training.resources.limits
    )
    env: list[dict[str, Any]] = [
        {"name": "THRIFTY_DISTILLED_MODEL", "value": owner.name},
        {
            "name": "THRIFTY_DISTILL_SPEC",
            "value": json.dumps(model.spec.model_dump(mode="json", by_alias=True), sort_keys=True),
        },
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    main = container(
        "distill",
        defaults.distill_image,
        args=args,
        env=env,
        mounts=[{"name": "artifacts", "mountPath": ARTIFACTS_DIR}],
        resources_block=res,
    )
    main["terminationMessagePolicy"] = "FallbackToLogsOnError"
    volumes = [
        {
            "name": "artifacts",
            "persistentVolumeClaim": {"claimName": names.distill_artifacts(owner.name)},
        }
    ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, name, component),
        "spec": {
            "backoffLimit": 2,
            "template": {
                "metadata": {"labels": metadata(owner, "", component)["labels"]},
                "spec": pod_spec(
                    [main],
                    volumes=volumes,
                    node_selector=selector,
                    tolerations=tolerations,
                    restart_policy="Never",
                    service_account=service_account,
                ),
            },
        },
    }


def build_train_job(
    model: DistilledModel, owner: Owner, version: str, defaults: Defaults
) -> Manifest:
    """`thrifty distill train`: export a snapshot with a held-out split, train a version."""
    args = [
        "distill",
        "train",
        "--name",
        owner.name,
        "--version",
        version,
        "--data-dir",
        ARTIFACTS_DIR,
    ]
    return _job(
        model,
        owner,
        defaults,
        name=names.train_job(owner.name, version),
        component=TRAIN_COMPONENT,
        args=args,
    )


def build_eval_job(
    model: DistilledModel, owner: Owner, version: str, defaults: Defaults
) -> Manifest:
    """`thrifty distill evaluate`: score the version, write the report into its ConfigMap."""
    args = [
        "distill",
        "evaluate",
        "--name",
        owner.name,
        "--version",
        version,
        "--data-dir",
        ARTIFACTS_DIR,
        "--report-configmap",
        names.eval_report(owner.name, version),
    ]
    job = _job(
        model,
        owner,
        defaults,
        name=names.eval_job(owner.name, version),
        component=EVAL_COMPONENT,
        args=args,
        service_account=names.distill_service_account(owner.name),
    )
    return job


def vllm_args(base_model: str, adapter_path: str, served_name: str) -> list[str]:
    """vLLM OpenAI server arguments serving the LoRA adapter under the student's name."""
    return [
        "--model",
        base_model,
        "--enable-lora",
        "--lora-modules",
        f"{served_name}={adapter_path}",
        "--host",
        "0.0.0.0",
        "--port",
        str(STUDENT_PORT),
    ]


def build_serving(
    model: DistilledModel, owner: Owner, version: str, defaults: Defaults
) -> list[Manifest]:
    """GPU Deployment + Service for a causal-lm student (classifiers run in the gateway)."""
    if model.spec.student.kind != "causal-lm":
        return []
    serving = model.spec.serving
    res, selector, tolerations = gpu_placement(
        serving.gpu, serving.resources.requests, serving.resources.limits
    )
    adapter = f"{ARTIFACTS_DIR}/students/{version}"
    main = container(
        "student",
        serving.image or defaults.vllm_image,
        args=vllm_args(model.spec.student.base_model or "", adapter, owner.name),
        ports=[{"name": "http", "containerPort": STUDENT_PORT, "protocol": "TCP"}],
        env=[{"name": "HF_HOME", "value": "/var/cache/thrifty/hf"}],
        mounts=[
            {"name": "artifacts", "mountPath": ARTIFACTS_DIR, "readOnly": True},
            {"name": "cache", "mountPath": "/var/cache/thrifty"},
        ],
        resources_block=res,
        probes={
            "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 15},
            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5},
        },
    )
    volumes = [
        {
            "name": "artifacts",
            "persistentVolumeClaim": {"claimName": names.distill_artifacts(owner.name)},
        },
        {"name": "cache", "emptyDir": {"sizeLimit": "20Gi"}},
    ]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, names.student(owner.name), SERVE_COMPONENT),
        "spec": {
            "replicas": serving.replicas,
            "selector": {"matchLabels": selector_labels(owner, SERVE_COMPONENT)},
            "template": {
                "metadata": {
                    "labels": metadata(owner, "", SERVE_COMPONENT)["labels"],
                    "annotations": {"thrifty.dev/version": version},
                },
                "spec": pod_spec(
                    [main], volumes=volumes, node_selector=selector, tolerations=tolerations
                ),
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, names.student(owner.name), SERVE_COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner, SERVE_COMPONENT),
            "ports": [{"name": "http", "port": STUDENT_PORT, "targetPort": "http"}],
        },
    }
    return [deployment, service]
