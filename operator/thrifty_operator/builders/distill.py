"""DistilledModel -> artifacts PVC, train and evaluate Jobs, report ConfigMap, GPU serving.

The pipeline is driven by facts the API server holds: a Job's Complete/Failed condition and the
evaluation report the evaluate Job writes into a ConfigMap the operator pre-creates (its
ServiceAccount may patch that one ConfigMap and nothing else).
"""

from __future__ import annotations

from typing import Any

import yaml

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
    short_hash,
)
from .defaults import Defaults
from .stores import pvc

TRAIN_COMPONENT = "thrifty-distill-train"
EVAL_COMPONENT = "thrifty-distill-eval"
ARTIFACTS_COMPONENT = "thrifty-distill-artifacts"
REPORT_KEY = "report.json"
RESOURCE_KEY = "resource.yaml"
DATA_DIR = "/var/lib/thrifty/data"
CAPTURE = f"{DATA_DIR}/capture"
SNAPSHOT = f"{DATA_DIR}/snapshot"
STUDENTS = f"{DATA_DIR}/students"
HF_CACHE = f"{DATA_DIR}/.cache/huggingface"
RESOURCE_DIR = "/etc/thrifty/distill"
NOT_ENOUGH_EXAMPLES = 3  # `thrifty distill train` exit code
# Finished Jobs go after a day (their logs are kept that long). The operator does not run them
# again: a run whose train Job completed is recorded in status.candidateVersion, and an
# evaluation is done once its report ConfigMap holds a report.
JOB_TTL_SECONDS = 24 * 3600
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
# On a train or evaluate Job: a digest of its spec. A Job's pod template is immutable, and the
# run's name does not change with the image or the resources: the operator replaces an
# unfinished Job whose spec changed and leaves a finished one alone.
TEMPLATE_HASH = "thrifty.dev/template-hash"


RETRAIN_ANNOTATION = "thrifty.dev/retrain"


def candidate_version(model: DistilledModel) -> str:
    """The run of a spec, and the artifact version it trains: a digest of everything that
    changes the student (the held-out share changes what it is trained on), and of the
    `thrifty.dev/retrain` annotation: setting it to a new value (a date, a counter; by hand or
    from a CronJob) trains a new version on the examples captured since, which serves once it
    passes the gate."""
    spec = model.spec
    basis: dict[str, object] = {
        "teacher": spec.teacher.model_dump(mode="json"),
        "student": spec.student.model_dump(mode="json"),
        "training": spec.training.model_dump(mode="json", exclude={"resources", "gpu"}),
        "heldOutFraction": spec.evaluation.held_out_fraction,
    }
    annotations = (model.metadata.model_extra or {}).get("annotations") or {}
    retrain = annotations.get(RETRAIN_ANNOTATION) if isinstance(annotations, dict) else None
    if retrain:
        basis["retrain"] = str(retrain)
    return f"v{short_hash(basis, 8)}"


def evaluation_run(model: DistilledModel, run: str) -> str:
    """The evaluation of a run under the spec's gate and confidence threshold (its Job and
    report ConfigMap are named after it): a new gate or threshold evaluates the run's version
    again, without retraining, so the report, the version's manifest (which the gateway
    checks) and the served threshold all follow the current spec."""
    spec = model.spec
    basis = {
        "confidenceThreshold": spec.routing.confidence_threshold,
        "minAgreement": spec.evaluation.min_agreement,
        "minCoverage": spec.evaluation.min_coverage,
    }
    return f"{run}-{short_hash(basis, 4)}"


def snapshot_dir(run: str) -> str:
    """Each run exports, trains and evaluates on its own snapshot."""
    return f"{SNAPSHOT}/{run}"


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


def build_artifacts_pvc(model: DistilledModel, owner: Owner, defaults: Defaults) -> Manifest:
    """Capture shards (written by gateways), snapshots and trained versions (written by Jobs),
    the Jobs' Hugging Face cache."""
    artifacts = model.spec.artifacts
    return pvc(
        owner,
        names.distill_artifacts(owner.name),
        ARTIFACTS_COMPONENT,
        artifacts.size,
        artifacts.storage_class_name,
        defaults.shared_access_mode,
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


def build_report_reset(owner: Owner, configmap: str) -> Manifest:
    """An earlier evaluation's report ConfigMap with its report blanked (applied over the one
    the evaluate Job wrote), where the operator may not delete it (RBAC without `delete` on
    ConfigMaps): should the spec come back to that evaluation, it runs again, so a report
    always matches the version's latest evaluation (its manifest, which the gateway reads).
    The blank goes when the ConfigMap is applied again without it."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, configmap, EVAL_COMPONENT),
        "data": {REPORT_KEY: ""},
    }


def build_resource_config(model: DistilledModel, owner: Owner) -> Manifest:
    """The DistilledModel as the pipeline commands read it (`--resource FILE`)."""
    resource = {
        "apiVersion": "thrifty.dev/v1alpha1",
        "kind": "DistilledModel",
        "metadata": {"name": owner.name, "namespace": owner.namespace},
        "spec": model.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, names.distill_resource(owner.name), TRAIN_COMPONENT),
        "data": {RESOURCE_KEY: yaml.safe_dump(resource, sort_keys=True)},
    }


def distill_image(model: DistilledModel, defaults: Defaults) -> str:
    """The Jobs' image: with torch, transformers and peft for a causal-lm student."""
    if model.spec.student.kind == "causal-lm":
        return defaults.distill_lm_image
    return defaults.distill_image


def _step(name: str, image: str, args: list[str], res: dict[str, Any], run: str) -> dict[str, Any]:
    step = container(
        name,
        image,
        args=args,
        env=[
            {"name": "THRIFTY_DISTILL_RESOURCE", "value": f"{RESOURCE_DIR}/{RESOURCE_KEY}"},
            {"name": "THRIFTY_SNAPSHOT_DIR", "value": snapshot_dir(run)},
            {"name": "THRIFTY_ARTIFACTS_DIR", "value": STUDENTS},
            {"name": "HOME", "value": "/tmp"},
            # A causal-lm base model (a GB or more) is downloaded once onto the data volume,
            # not into the small /tmp emptyDir (where the pod would be evicted).
            {"name": "HF_HOME", "value": HF_CACHE},
        ],
        mounts=[
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "resource", "mountPath": RESOURCE_DIR, "readOnly": True},
        ],
        resources_block=res,
    )
    step["terminationMessagePolicy"] = "FallbackToLogsOnError"
    return step


def _job(
    model: DistilledModel,
    owner: Owner,
    *,
    name: str,
    component: str,
    steps: list[dict[str, Any]],
    service_account: str | None = None,
    fail_fast_exit: tuple[str, int] | None = None,
) -> Manifest:
    """A run-once Job: earlier steps as init containers, the last as the main container."""
    training = model.spec.training
    _, selector, tolerations = gpu_placement(training.gpu, {}, {})
    volumes = [
        {
            "name": "data",
            "persistentVolumeClaim": {"claimName": names.distill_artifacts(owner.name)},
        },
        {"name": "resource", "configMap": {"name": names.distill_resource(owner.name)}},
    ]
    pod = pod_spec(
        steps[-1:],
        volumes=volumes,
        node_selector=selector,
        tolerations=tolerations,
        restart_policy="Never",
        service_account=service_account,
    )
    if len(steps) > 1:
        pod["initContainers"] = steps[:-1]
    spec: dict[str, Any] = {
        "backoffLimit": 2,
        "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
        "template": {"metadata": {"labels": metadata(owner, "", component)["labels"]}, "spec": pod},
    }
    if fail_fast_exit is not None:
        step, code = fail_fast_exit
        spec["podFailurePolicy"] = {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": step, "operator": "In", "values": [code]},
                }
            ]
        }
    meta = metadata(owner, name, component)
    meta["annotations"] = {TEMPLATE_HASH: short_hash(spec, 12)}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


def build_train_job(model: DistilledModel, owner: Owner, run: str, defaults: Defaults) -> Manifest:
    """`thrifty distill export` (held-out split) then `thrifty distill train`: the run's own
    snapshot and version (named after the run), so no other run's Job can mix into them.

    Too few captured examples fails the Job at once (no retries); the operator retries later.
    """
    training = model.spec.training
    res, _, _ = gpu_placement(training.gpu, training.resources.requests, training.resources.limits)
    resource = f"{RESOURCE_DIR}/{RESOURCE_KEY}"
    export = [
        "distill",
        "export",
        "-f",
        resource,
        "--capture-dir",
        CAPTURE,
        "--snapshot-dir",
        snapshot_dir(run),
    ]
    train = [
        "distill",
        "train",
        "-f",
        resource,
        "--snapshot-dir",
        snapshot_dir(run),
        "--artifacts-dir",
        STUDENTS,
        "--version",
        run,
    ]
    image = distill_image(model, defaults)
    return _job(
        model,
        owner,
        name=names.train_job(owner.name, run),
        component=TRAIN_COMPONENT,
        steps=[
            _step("export", image, export, resources(training.resources.requests, {}), run),
            _step("train", image, train, res, run),
        ],
        fail_fast_exit=("train", NOT_ENOUGH_EXAMPLES),
    )


def build_eval_job(model: DistilledModel, owner: Owner, run: str, defaults: Defaults) -> Manifest:
    """`thrifty distill evaluate` of the run's own version on its own snapshot, wrapped by
    `thrifty operator publish-report`, which writes the summary into the report ConfigMap of
    the evaluation (the only object its ServiceAccount may touch)."""
    resource = f"{RESOURCE_DIR}/{RESOURCE_KEY}"
    evaluation = evaluation_run(model, run)
    args = [
        "operator",
        "publish-report",
        "--configmap",
        names.eval_report(owner.name, evaluation),
        "--",
        "thrifty",
        "distill",
        "evaluate",
        "-f",
        resource,
        "--snapshot-dir",
        snapshot_dir(run),
        "--artifacts-dir",
        STUDENTS,
        "--version",
        run,
    ]
    res = resources(model.spec.training.resources.requests, model.spec.training.resources.limits)
    return _job(
        model,
        owner,
        name=names.eval_job(owner.name, evaluation),
        component=EVAL_COMPONENT,
        steps=[_step("evaluate", distill_image(model, defaults), args, res, run)],
        service_account=names.distill_service_account(owner.name),
    )
