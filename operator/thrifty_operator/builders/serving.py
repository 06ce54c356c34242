"""DistilledModel -> the GPU serving Deployment and Service of a causal-lm student (vLLM with
the active version's LoRA adapter). Classifier students run inside the gateway instead."""

from __future__ import annotations

from thrifty_core.api import DistilledModel
from thrifty_core.student.artifact import ADAPTER
from thrifty_core.student.serving import vllm_args, vllm_probes

from . import names
from .common import Manifest, Owner, container, metadata, pod_spec, selector_labels
from .defaults import STUDENT_PORT, Defaults
from .distill import DATA_DIR, STUDENTS, gpu_placement

SERVE_COMPONENT = "thrifty-student"


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
    adapter = f"{STUDENTS}/{version}/{ADAPTER}"
    args = vllm_args(
        model.spec.student.base_model or "",
        adapter,
        owner.name,
        port=STUDENT_PORT,
        # The model is split over every GPU the pod asks for (else all but one sit idle).
        tensor_parallel_size=max(1, serving.gpu.count),
    )
    main = container(
        "student",
        serving.image or defaults.vllm_image,
        command=["vllm"],
        args=args,
        ports=[{"name": "http", "containerPort": STUDENT_PORT, "protocol": "TCP"}],
        # HOME too: vLLM and Triton keep caches under it, and the root filesystem is read-only.
        env=[
            {"name": "HF_HOME", "value": "/var/cache/thrifty/hf"},
            {"name": "HOME", "value": "/var/cache/thrifty"},
        ],
        mounts=[
            {"name": "artifacts", "mountPath": DATA_DIR, "readOnly": True},
            {"name": "cache", "mountPath": "/var/cache/thrifty"},
        ],
        resources_block=res,
        probes=vllm_probes("http", serving.startup_timeout_seconds),
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
            # Each pod holds whole GPUs, and a full GPU pool has none spare for the extra pod
            # the default rolling update (maxSurge 25%) starts first: the new version would
            # stay Pending for ever. Replace one pod at a time instead (no surge): with several
            # replicas the others keep serving meanwhile (Recreate would stop them all), and a
            # new version that cannot start takes down one replica, not all; meanwhile the
            # gateway's fallback has the teacher answer.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            # Loading the model counts as progress, not as a stuck rollout.
            "progressDeadlineSeconds": serving.startup_timeout_seconds + 600,
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
