"""DistilledModel -> the GPU serving Deployment, Service, NetworkPolicy and API-key Secret of
a causal-lm student (vLLM with the active version's LoRA adapter). Classifier students run
inside the gateway instead.

The student answers its teacher's gateway only: a NetworkPolicy admits that gateway's pods
alone, and vLLM requires the generated API key (`--api-key`, read from `VLLM_API_KEY`) on
every `/v1` call, which the gateway sends from its mounted copy of the Secret. Otherwise any
pod could call the model (trained on tenants' traffic) past tenant keys, budgets and the
ledger. The pod mounts only the served version's directory of the artifacts volume, never
the captured traffic beside it.
"""

from __future__ import annotations

from thrifty_core.api import DistilledModel
from thrifty_core.render import student_api_key
from thrifty_core.student.artifact import ADAPTER
from thrifty_core.student.serving import vllm_args, vllm_probes

from . import names
from .common import Manifest, Owner, container, metadata, pod_spec, selector_labels
from .defaults import STUDENT_PORT, Defaults
from .distill import DATA_DIR, STUDENTS, gpu_placement

SERVE_COMPONENT = "thrifty-student"
# The teacher's gateway pods (builders.gateway.COMPONENT, not imported: gateway imports render).
GATEWAY_COMPONENT = "thrifty-gateway"
API_KEY_ENV = "VLLM_API_KEY"  # vLLM's own name for `--api-key`


def version_dir(version: str) -> str:
    """Where the served version's directory is mounted (its path on the artifacts volume)."""
    return f"{STUDENTS}/{version}"


def build_student_auth_secret(owner: Owner, api_key: str) -> Manifest:
    """The generated API key of a causal-lm student, owned by the DistilledModel (created once,
    never replaced: the caller makes the value; builders stay free of randomness)."""
    ref = student_api_key(owner.name)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(owner, ref.name, SERVE_COMPONENT),
        "type": "Opaque",
        "stringData": {ref.key: api_key},
    }


def build_serving_network_policy(model: DistilledModel, owner: Owner) -> Manifest:
    """Ingress to the student's pods only from its teacher gateway's pods (same namespace),
    and only on the serving port."""
    teacher = model.spec.teacher.gateway_ref.name
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(owner, names.student(owner.name), SERVE_COMPONENT),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner, SERVE_COMPONENT)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "podSelector": {
                                "matchLabels": {
                                    "app.kubernetes.io/name": GATEWAY_COMPONENT,
                                    "app.kubernetes.io/instance": teacher,
                                }
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": STUDENT_PORT}],
                }
            ],
        },
    }


def build_serving(
    model: DistilledModel, owner: Owner, version: str, defaults: Defaults
) -> list[Manifest]:
    """GPU Deployment, Service and NetworkPolicy for a causal-lm student (classifiers run in
    the gateway). The API-key Secret (`build_student_auth_secret`) must exist first."""
    if model.spec.student.kind != "causal-lm":
        return []
    serving = model.spec.serving
    res, selector, tolerations = gpu_placement(
        serving.gpu, serving.resources.requests, serving.resources.limits
    )
    adapter = f"{version_dir(version)}/{ADAPTER}"
    key = student_api_key(owner.name)
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
            {
                "name": API_KEY_ENV,
                "valueFrom": {"secretKeyRef": {"name": key.name, "key": key.key}},
            },
        ],
        # Only the served version (its adapter), read-only: the rest of the volume holds the
        # captured traffic (capture/, snapshot/) and the other versions. The base model is
        # downloaded into the cache emptyDir.
        mounts=[
            {
                "name": "artifacts",
                "mountPath": version_dir(version),
                "subPath": version_dir(version).removeprefix(f"{DATA_DIR}/"),
                "readOnly": True,
            },
            {"name": "cache", "mountPath": "/var/cache/thrifty"},
        ],
        resources_block=res,
        probes=vllm_probes("http", serving.startup_timeout_seconds),
    )
    volumes = [
        {
            "name": "artifacts",
            "persistentVolumeClaim": {
                "claimName": names.distill_artifacts(owner.name),
                "readOnly": True,
            },
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
    return [deployment, service, build_serving_network_policy(model, owner)]
