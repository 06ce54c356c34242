"""The operator on the real control plane (kwok nodes): install the chart, apply examples/,
converge, edit, delete, hand-delete, crash, and stay within the chart's RBAC.

One module-scoped platform keeps this affordable on a small machine; tests run in file order
and each asserts on its own step. Job completion comes from kwok (it completes Job pods); the
evaluation report is written by the test in place of the evaluate Job (see
`simulate_evaluation`).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.k8s import GPU_NODES, Cluster, wait_for
from tests.e2e.operator_helpers import (
    KINDS,
    ROOT,
    OperatorProcess,
    condition,
    get,
    installed_operator,
    pod_template_hash,
    settle,
    simulate_evaluation,
    wait_gone,
    wait_ready,
)
from thrifty_core.config import parse_config
from thrifty_operator.rbac import RULES
from thrifty_operator.report import ApiTarget, patch_configmap, run_and_publish

pytestmark = pytest.mark.e2e


@dataclass
class Platform:
    cluster: Cluster
    ns: str
    system_ns: str
    release: str
    operator: OperatorProcess

    @property
    def account(self) -> str:
        return f"{self.release}-operator"


@pytest.fixture(scope="module")
def platform(k8s_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    cluster = k8s_cluster
    suffix = uuid.uuid4().hex[:6]
    ns, system_ns, release = f"op-{suffix}", f"thrifty-system-{suffix}", f"thrifty-{suffix}"
    tmp = tmp_path_factory.mktemp("operator")
    with installed_operator(cluster, ns, system_ns, release, tmp, volumes=16) as operator:
        # The whole folder, as a user runs it (the simulator, the local config as a ConfigMap).
        cluster.kubectl("apply", "-n", ns, "-f", str(ROOT / "examples"))
        yield Platform(cluster, ns, system_ns, release, operator)


def _items(cluster: Cluster, kind: str, ns: str, selector: str = "") -> list[dict[str, Any]]:
    args = [kind, "-n", ns] + (["-l", selector] if selector else [])
    items: list[dict[str, Any]] = cluster.get_json(*args)["items"]
    return items


def test_examples_reach_ready(platform: Platform) -> None:
    cluster, ns = platform.cluster, platform.ns
    for kind, name in (
        ("cachepolicy", "default-cache"),
        ("batchqueue", "default-batch"),
        ("llmgateway", "thrifty"),
    ):
        obj = wait_ready(cluster, kind, ns, name, timeout=180)
        assert condition(obj, "Ready")["reason"] == "Reconciled"
    version = simulate_evaluation(cluster, ns, "banking-intent", agreement=0.93, coverage=0.8)
    model = wait_ready(cluster, "distilledmodel", ns, "banking-intent", timeout=120)
    assert model["status"]["activeVersion"] == version
    assert condition(model, "Evaluated")["reason"] == "GatePassed"
    assert condition(model, "Trained")["status"] == "True"
    policy = get(cluster, "cachepolicy", ns, "default-cache") or {}
    assert policy["status"]["collection"] == f"thrifty-{ns}-default-cache"
    assert condition(policy, "CollectionReady")["reason"] == "Created"
    # The managed Qdrant's image is recorded in the status and on its volume claim (kept
    # across operator upgrades, also when the StatefulSet and the status are gone).
    qdrant = get(cluster, "statefulset", ns, "default-cache-qdrant") or {}
    (running,) = [c["image"] for c in qdrant["spec"]["template"]["spec"]["containers"]]
    assert policy["status"]["qdrantImage"] == running
    claim = wait_for(
        lambda: (
            (get(cluster, "persistentvolumeclaim", ns, "storage-default-cache-qdrant-0") or {})
            .get("metadata", {})
            .get("annotations", {})
            .get("thrifty.dev/qdrant-image")
        ),
        timeout=60,
        message="the Qdrant image on its volume claim",
    )
    assert claim == running
    # The status names the completed ensure Job, the only one of the policy's collection Jobs.
    jobs = _items(
        cluster,
        "job",
        ns,
        "app.kubernetes.io/name=thrifty-collection,app.kubernetes.io/instance=default-cache",
    )
    ensure = [
        j["metadata"]["name"] for j in jobs if "-collection-delete" not in j["metadata"]["name"]
    ]
    assert ensure == [policy["status"]["collectionJob"]]


def _api_target(cluster: Cluster, ns: str, account: str, tmp: Path) -> ApiTarget:
    """What the evaluate Job's pod would see: its ServiceAccount token and the cluster CA."""
    token = cluster.kubectl("create", "token", account, "-n", ns, "--duration=10m").stdout
    view = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    server = view["clusters"][0]["cluster"]
    if "certificate-authority-data" in server:
        ca = tmp / "ca.crt"
        ca.write_bytes(base64.b64decode(server["certificate-authority-data"]))
        return ApiTarget(server["server"], token.strip(), ns, str(ca))
    return ApiTarget(server["server"], token.strip(), ns, server["certificate-authority"])


def test_evaluation_report_is_published_with_the_jobs_own_account(
    platform: Platform, tmp_path: Path
) -> None:
    """`publish-report` as the evaluate Job runs it, with the Job's ServiceAccount: it may write
    its report ConfigMap and nothing else; a new passing version switches the gateway's route."""
    cluster, ns = platform.cluster, platform.ns
    target = _api_target(cluster, ns, "banking-intent-distill", tmp_path)
    selector = "thrifty.dev/owner-name=banking-intent,app.kubernetes.io/name=thrifty-distill-eval"
    (report,) = _items(cluster, "configmaps", ns, selector)
    summary = {
        "version": "v0002",
        "gate": {"passed": True},
        "at_threshold": {"coverage": 0.75, "agreement_with_fallback": 0.94},
    }
    evaluate = [sys.executable, "-c", f"print({json.dumps(json.dumps(summary))})"]
    assert run_and_publish(evaluate, report["metadata"]["name"], target) == 0

    def switched() -> bool:
        cm = get(cluster, "configmap", ns, "thrifty-gateway-config") or {}
        config = parse_config(yaml.safe_load(cm["data"]["gateway.yaml"]))
        return [s.version for s in config.students] == ["v0002"]

    wait_for(switched, timeout=60, message="the gateway config to route to v0002")
    model = wait_for(
        lambda: (
            (m := get(cluster, "distilledmodel", ns, "banking-intent"))
            and m["status"].get("activeVersion") == "v0002"
            and m
        ),
        timeout=30,
        message="activeVersion v0002",
    )
    assert condition(model, "Ready")["status"] == "True"
    assert model["status"]["agreement"] == 0.94
    with pytest.raises(urllib.error.HTTPError) as denied:
        patch_configmap(target, "thrifty-gateway-config", {"gateway.yaml": "tampered"})
    denied.value.close()
    assert denied.value.code == 403


def _rollout_state(workload: dict[str, Any]) -> tuple[Any, ...]:
    """(name, generation, observed generation, wanted, current, updated, ready) replicas."""
    status = workload.get("status", {})
    return (
        workload["metadata"]["name"],
        workload["metadata"].get("generation"),
        status.get("observedGeneration"),
        workload["spec"].get("replicas", 1),
        status.get("replicas", 0),
        status.get("updatedReplicas", 0),
        status.get("readyReplicas", 0),
    )


def _rolled_out(state: tuple[Any, ...]) -> bool:
    _, generation, observed, wanted, current, updated, ready = state
    return bool(generation == observed and wanted == current == updated == ready)


def test_pods_are_admitted_as_restricted_and_scheduled(platform: Platform) -> None:
    cluster, ns = platform.cluster, platform.ns
    labels = json.loads(cluster.kubectl("get", "ns", ns, "-o", "json").stdout)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # The previous step switched the route to a new student version, which rolls the workloads
    # that mount the gateway config, and the operator may roll them again on its next reconcile
    # (one `kubectl rollout status` can return between two rollouts). Wait until every workload
    # is settled (the controller has seen its last spec, every replica is updated and ready, no
    # Pod of an old template is left) and stays so, unchanged, over two reads a few seconds apart.
    last: list[tuple[Any, ...]] = []

    def settled() -> bool:
        workloads = _items(cluster, "deployments", ns) + _items(cluster, "statefulsets", ns)
        now = [_rollout_state(w) for w in workloads]
        steady = now == last and all(_rolled_out(state) for state in now)
        last[:] = now
        return steady

    wait_for(
        settled,
        timeout=240,
        interval=3,
        message=lambda: f"every workload rolled out and steady: {last}",
    )
    pods = cluster.pods(ns)
    assert len(pods) >= 8
    for pod in pods:
        assert pod["spec"].get("nodeName"), pod["metadata"]["name"]
        assert pod["spec"]["nodeName"] not in GPU_NODES, pod["metadata"]["name"]
    events = cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout
    assert "violates PodSecurity" not in events
    operator_pods = cluster.pods(platform.system_ns)
    assert operator_pods and all(p["spec"].get("nodeName") for p in operator_pods)


def test_rendered_config_matches_the_specs(platform: Platform) -> None:
    cluster, ns = platform.cluster, platform.ns
    cm = get(cluster, "configmap", ns, "thrifty-gateway-config") or {}
    config = parse_config(yaml.safe_load(cm["data"]["gateway.yaml"]))
    spec = yaml.safe_load((ROOT / "examples" / "llmgateway.yaml").read_text())["spec"]
    assert [r.name for r in config.routes] == [r["name"] for r in spec["routes"]]
    assert config.providers[0].base_url == spec["providers"][0]["baseUrl"]
    assert config.default_cache_policy == "default-cache"
    policy = config.cache_policies["default-cache"]
    example = yaml.safe_load((ROOT / "examples" / "cachepolicy.yaml").read_text())
    assert policy.spec.semantic.threshold == example["spec"]["semantic"]["threshold"]
    assert policy.stores.collection == f"thrifty-{ns}-default-cache"
    assert policy.stores.owner == ns  # in the keyspace: no sharing with another namespace
    # In the usage, budget and rate-limit keys: no sharing with another gateway.
    assert config.ledger.gateway == f"{ns}/thrifty"
    assert policy.stores.redis_url == f"redis://default-cache-redis.{ns}.svc:6379/0"
    assert policy.stores.redis_password is not None
    assert str(policy.stores.redis_password.file).endswith("/default-cache-redis-auth/password")
    assert config.batch is not None and config.batch.name == "default-batch"
    (student,) = config.students
    model = get(cluster, "distilledmodel", ns, "banking-intent") or {}
    assert (student.name, student.version) == ("banking-intent", model["status"]["activeVersion"])
    assert {t.name for t in config.tenants} == {"team-a", "team-b"}
    assert "sk-simulator-dev" not in cm["data"]["gateway.yaml"]
    gateway = get(cluster, "llmgateway", ns, "thrifty") or {}
    assert gateway["status"]["configHash"] == pod_template_hash(cluster, ns, "thrifty-gateway")


def test_gpu_student_is_trained_and_served_on_gpu_nodes(platform: Platform) -> None:
    cluster, ns = platform.cluster, platform.ns
    manifest = {
        "apiVersion": "thrifty.dev/v1alpha1",
        "kind": "DistilledModel",
        "metadata": {"name": "summariser", "namespace": ns},
        "spec": {
            "teacher": {"gatewayRef": {"name": "thrifty"}, "route": "gpt-4o"},
            "student": {"kind": "causal-lm", "baseModel": "Qwen/Qwen2.5-0.5B-Instruct"},
            "training": {"gpu": {"count": 1, "product": "NVIDIA-H100-80GB-HBM3"}},
            "serving": {"replicas": 2, "gpu": {"count": 1}},
            "routing": {"mode": "canary", "canaryPercent": 10},
        },
    }
    cluster.apply(manifest)
    simulate_evaluation(cluster, ns, "summariser", agreement=0.95, coverage=0.9)
    model = wait_ready(cluster, "distilledmodel", ns, "summariser", timeout=150)
    assert model["status"]["endpoint"] == f"http://summariser-student.{ns}.svc:8000/v1"
    training = _items(cluster, "pods", ns, "app.kubernetes.io/name=thrifty-distill-train")
    serving = _items(cluster, "pods", ns, "app.kubernetes.io/name=thrifty-student")
    gpu_pods = [
        p
        for p in training + serving
        if p["metadata"]["labels"].get("thrifty.dev/owner-name") == "summariser"
    ]
    assert len(serving) == 2 and gpu_pods
    for pod in gpu_pods:
        assert pod["spec"]["nodeName"] in GPU_NODES, pod["metadata"]["name"]


def test_a_changed_job_template_leaves_a_trained_model_ready(platform: Platform) -> None:
    """An edit of spec.training.resources (or an operator upgrade with a new distill image)
    changes the pod template of the run's Jobs but not their names: the finished Jobs stay as
    they ran (a Job's template is immutable, and re-applying it was refused), and the model
    stays Ready."""
    cluster, ns = platform.cluster, platform.ns
    cluster.kubectl(
        "patch",
        "distilledmodel",
        "banking-intent",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec": {"training": {"resources": {"requests": {"cpu": "3"}}}}}',
    )
    generation = (get(cluster, "distilledmodel", ns, "banking-intent") or {})["metadata"][
        "generation"
    ]
    model = wait_for(
        lambda: (
            (m := get(cluster, "distilledmodel", ns, "banking-intent"))
            and m["status"].get("observedGeneration") == generation
            and m
        ),
        timeout=60,
        message="the operator to reconcile the edit",
    )
    assert condition(model, "Ready")["status"] == "True", model["status"]["conditions"]
    assert condition(model, "Trained")["reason"] == "TrainingSucceeded"


def plain_gateway(name: str, ns: str) -> dict[str, Any]:
    """The example gateway under another name, without a batch queue (one holds the queue)."""
    gateway = yaml.safe_load((ROOT / "examples" / "llmgateway.yaml").read_text())
    gateway["metadata"] = {"name": name, "namespace": ns}
    gateway["spec"].pop("batchQueueRef")
    return dict(gateway)


def test_policy_edit_rolls_only_the_gateways_using_it(platform: Platform) -> None:
    cluster, ns = platform.cluster, platform.ns
    plain = plain_gateway("plain", ns)
    for key in ("cachePolicyRef", "autoscaling", "podDisruptionBudget"):
        plain["spec"].pop(key)
    plain["spec"]["replicas"] = 1
    cluster.apply(plain)
    wait_ready(cluster, "llmgateway", ns, "plain")
    wait_ready(cluster, "llmgateway", ns, "thrifty")
    settle(4)  # one drift period: both are stable before the edit
    before_using = pod_template_hash(cluster, ns, "thrifty-gateway")
    before_plain = pod_template_hash(cluster, ns, "plain-gateway")
    cluster.kubectl(
        "patch",
        "cachepolicy",
        "default-cache",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec": {"semantic": {"threshold": 0.97}}}',
    )
    after = wait_for(
        lambda: (h := pod_template_hash(cluster, ns, "thrifty-gateway")) != before_using and h,
        timeout=60,
        message="the gateway using the policy to roll",
    )
    cm = get(cluster, "configmap", ns, "thrifty-gateway-config") or {}
    assert "threshold: 0.97" in cm["data"]["gateway.yaml"]
    settle(4)
    assert pod_template_hash(cluster, ns, "plain-gateway") == before_plain
    assert pod_template_hash(cluster, ns, "thrifty-gateway") == after
    worker = get(cluster, "deployment", ns, "default-batch-batch-worker") or {}
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["thrifty.dev/config-hash"] == after  # the worker rolls with its gateway


def _recreated(
    cluster: Cluster, ns: str, kind: str, name: str, old_uid: str
) -> Callable[[], dict[str, Any] | None]:
    def probe() -> dict[str, Any] | None:
        obj = get(cluster, kind, ns, name)
        return obj if obj and obj["metadata"]["uid"] != old_uid else None

    return probe


def _none_left(cluster: Cluster, kind: str, ns: str) -> Callable[[], bool]:
    return lambda: not _items(cluster, kind, ns)


def test_hand_deleted_children_come_back(platform: Platform) -> None:
    cluster, ns = platform.cluster, platform.ns
    children = [
        ("service", "thrifty-gateway"),
        ("configmap", "thrifty-gateway-config"),
        ("deployment", "default-cache-redis"),
        ("horizontalpodautoscaler", "thrifty-gateway"),
    ]
    uids = {(k, n): (get(cluster, k, ns, n) or {})["metadata"]["uid"] for k, n in children}
    for kind, name in children:
        cluster.kubectl("delete", kind, name, "-n", ns, "--wait=false")
    for kind, name in children:
        back = wait_for(
            _recreated(cluster, ns, kind, name, uids[(kind, name)]),
            timeout=60,
            message=f"{kind}/{name} to be recreated",
        )
        assert back["metadata"]["ownerReferences"][0]["controller"] is True
    wait_ready(cluster, "cachepolicy", ns, "default-cache")


def test_hand_edited_children_are_repaired(platform: Platform) -> None:
    cluster, ns = platform.cluster, platform.ns
    rendered = (get(cluster, "configmap", ns, "thrifty-gateway-config") or {})["data"]
    cluster.kubectl(
        "patch",
        "configmap",
        "thrifty-gateway-config",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"data": {"gateway.yaml": "tampered: true\n"}}),
    )
    cluster.kubectl("scale", "deployment", "default-cache-redis", "-n", ns, "--replicas=3")

    def repaired() -> bool:
        cm = get(cluster, "configmap", ns, "thrifty-gateway-config") or {}
        redis = get(cluster, "deployment", ns, "default-cache-redis") or {}
        return bool(cm.get("data") == rendered and redis["spec"]["replicas"] == 1)

    wait_for(repaired, timeout=60, message="the drift check to restore the children")


def test_deleting_a_resource_removes_its_children(platform: Platform) -> None:
    cluster, ns = platform.cluster, platform.ns
    cluster.kubectl("delete", "llmgateway", "plain", "-n", ns, "--wait=false")
    wait_gone(cluster, "llmgateway", ns, "plain")
    for kind in ("deployment", "service"):
        wait_gone(cluster, kind, ns, "plain-gateway")
    wait_gone(cluster, "configmap", ns, "plain-gateway-config")
    assert get(cluster, "deployment", ns, "thrifty-gateway") is not None


def test_bad_spec_is_reported_without_a_retry_storm(platform: Platform) -> None:
    cluster, ns = platform.cluster, platform.ns
    before = pod_template_hash(cluster, ns, "thrifty-gateway")
    cluster.apply(
        {
            "apiVersion": "thrifty.dev/v1alpha1",
            "kind": "DistilledModel",
            "metadata": {"name": "bad-route", "namespace": ns},
            "spec": {
                "teacher": {"gatewayRef": {"name": "thrifty"}, "route": "no-such-route"},
                "student": {"kind": "classifier"},
            },
        }
    )

    def reported() -> dict[str, Any] | None:
        ready = condition(get(cluster, "distilledmodel", ns, "bad-route"), "Ready")
        return ready if ready.get("reason") == "InvalidSpec" else None

    ready = wait_for(reported, timeout=60, message="bad-route Ready=False InvalidSpec")
    assert ready["status"] == "False" and "no-such-route" in ready["message"]
    settle(8)  # several drift periods
    events = _items(cluster, "events", ns, "")
    mine = [e for e in events if e["involvedObject"].get("name") == "bad-route"]
    assert sum(int(e.get("count", 1) or 1) for e in mine) <= 3, mine
    assert not _items(cluster, "jobs", ns, "thrifty.dev/owner-name=bad-route")
    assert pod_template_hash(cluster, ns, "thrifty-gateway") == before
    cluster.kubectl("delete", "distilledmodel", "bad-route", "-n", ns)


def test_operator_killed_mid_reconcile_converges(platform: Platform) -> None:
    cluster, ns, op = platform.cluster, platform.ns, platform.operator
    cluster.apply(plain_gateway("late", ns))
    wait_for(
        lambda: get(cluster, "configmap", ns, "late-gateway-config"),
        timeout=30,
        interval=0.1,
        message="the operator to start on late",
    )
    op.kill()  # mid-reconcile: the ConfigMap exists, the rest may not
    cluster.kubectl(
        "patch",
        "llmgateway",
        "late",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec": {"replicas": 3, "autoscaling": {"enabled": false}}}',
    )
    op.start()
    obj = wait_ready(cluster, "llmgateway", ns, "late")
    assert obj["status"]["readyReplicas"] == 3
    for kind in ("deployments", "services", "configmaps", "replicasets"):
        owned = _items(cluster, kind, ns, "thrifty.dev/owner-name=late")
        names = [o["metadata"]["name"] for o in owned]
        if kind != "replicasets":
            assert len(names) == 1, (kind, names)
    assert get(cluster, "horizontalpodautoscaler", ns, "late-gateway") is None
    for kind in KINDS:  # kopf's finalizer (its drift timers need one) and nothing else
        for item in _items(cluster, kind, ns):
            assert set(item["metadata"].get("finalizers", [])) <= {"thrifty.dev/finalizer"}
    cluster.kubectl("delete", "llmgateway", "late", "-n", ns, "--wait=false")
    wait_gone(cluster, "llmgateway", ns, "late")
    wait_gone(cluster, "deployment", ns, "late-gateway")


def test_turning_autoscaling_on_keeps_the_replicas_running(platform: Platform) -> None:
    """The operator stops setting spec.replicas when the HPA takes over; as the field's only
    owner it would be removed by that apply (falling back to 1 pod). It is handed over first."""
    cluster, ns = platform.cluster, platform.ns
    gateway = plain_gateway("scaled", ns)
    for key in ("cachePolicyRef", "podDisruptionBudget"):
        gateway["spec"].pop(key)
    gateway["spec"]["autoscaling"] = {"enabled": False}
    gateway["spec"]["replicas"] = 3
    cluster.apply(gateway)
    obj = wait_ready(cluster, "llmgateway", ns, "scaled")
    assert obj["status"]["readyReplicas"] == 3
    cluster.kubectl(
        "patch",
        "llmgateway",
        "scaled",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec": {"autoscaling": {"enabled": true, "minReplicas": 2, "maxReplicas": 6}}}',
    )
    wait_for(
        lambda: get(cluster, "horizontalpodautoscaler", ns, "scaled-gateway"),
        timeout=60,
        message="the HPA of scaled",
    )
    settle(4)  # a drift period: the operator applied the Deployment without replicas
    deployment = get(cluster, "deployment", ns, "scaled-gateway") or {}
    assert deployment["spec"]["replicas"] == 3
    cluster.kubectl("delete", "llmgateway", "scaled", "-n", ns, "--wait=false")
    wait_gone(cluster, "llmgateway", ns, "scaled")


def test_policy_asking_to_delete_data_drops_its_collection_first(platform: Platform) -> None:
    cluster, ns = platform.cluster, platform.ns
    policy = yaml.safe_load((ROOT / "examples" / "cachepolicy.yaml").read_text())
    policy["metadata"] = {"name": "scratch", "namespace": ns}
    policy["spec"]["deletionPolicy"] = "Delete"
    cluster.apply(policy)
    obj = wait_ready(cluster, "cachepolicy", ns, "scratch", timeout=120)
    assert obj["metadata"]["finalizers"] == ["thrifty.dev/finalizer"]
    sts = get(cluster, "statefulset", ns, "scratch-qdrant") or {}
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    # The managed Qdrant requires an API key the operator generated, owned by the policy.
    key = get(cluster, "secret", ns, "scratch-qdrant-auth") or {}
    assert key["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    (env,) = [
        e
        for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]
        if e["name"] == "QDRANT__SERVICE__API_KEY"
    ]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "scratch-qdrant-auth", "key": "api-key"}
    cluster.kubectl("delete", "cachepolicy", "scratch", "-n", ns, "--wait=false")
    # The finalizer runs the delete Job (kwok completes it) before letting the policy go.
    job = wait_for(
        lambda: get(cluster, "job", ns, "scratch-collection-delete"),
        timeout=30,
        message="the collection delete Job",
    )
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["operator", "delete-collection"] and f"thrifty-{ns}-scratch" in args
    assert args[args.index("--policy") + 1] == f"{ns}/scratch"  # only its entries if shared
    assert args[args.index("--api-key-file") + 1].endswith("/scratch-qdrant-auth/api-key")
    wait_gone(cluster, "cachepolicy", ns, "scratch")
    wait_gone(cluster, "statefulset", ns, "scratch-qdrant")
    wait_gone(cluster, "persistentvolumeclaim", ns, "storage-scratch-qdrant-0")


def test_an_older_managed_qdrant_is_upgraded_one_minor_version_at_a_time(
    platform: Platform,
) -> None:
    """A Qdrant pinned at v1.16.3, then left to the operator (upgrade: Automatic): its
    StatefulSet goes through v1.17.1 to the default, each step rolled out (the StatefulSet
    controller's revisions record every template it rolled), never skipping a minor version."""
    cluster, ns = platform.cluster, platform.ns
    policy = yaml.safe_load((ROOT / "examples" / "cachepolicy.yaml").read_text())
    policy["metadata"] = {"name": "stepped", "namespace": ns}
    policy["spec"]["deletionPolicy"] = "Delete"
    policy["spec"]["stores"]["qdrant"]["image"] = "docker.io/qdrant/qdrant:v1.16.3"
    cluster.apply(policy)
    obj = wait_ready(cluster, "cachepolicy", ns, "stepped", timeout=120)
    assert obj["status"]["qdrantImage"] == "docker.io/qdrant/qdrant:v1.16.3"
    cluster.kubectl(
        "patch", "cachepolicy", "stepped", "-n", ns, "--type=json",
        "-p", '[{"op": "remove", "path": "/spec/stores/qdrant/image"}]',
    )  # fmt: skip
    default = yaml.safe_load((ROOT / "charts/thrifty/values.yaml").read_text())["images"]["qdrant"]
    obj = wait_ready(cluster, "cachepolicy", ns, "stepped", timeout=180)
    assert obj["status"]["qdrantImage"] == default
    assert "upgrading" not in condition(obj, "StoreReady")["message"]
    sts = get(cluster, "statefulset", ns, "stepped-qdrant") or {}
    revisions = sorted(
        (
            r
            for r in _items(cluster, "controllerrevision", ns)
            if any(o["uid"] == sts["metadata"]["uid"] for o in r["metadata"]["ownerReferences"])
        ),
        key=lambda r: int(r["revision"]),
    )
    images = [r["data"]["spec"]["template"]["spec"]["containers"][0]["image"] for r in revisions]
    rolled = [x for i, x in enumerate(images) if i == 0 or images[i - 1] != x]
    assert rolled == [
        "docker.io/qdrant/qdrant:v1.16.3",
        "docker.io/qdrant/qdrant:v1.17.1",
        default,
    ]
    claim = get(cluster, "persistentvolumeclaim", ns, "storage-stepped-qdrant-0") or {}
    assert claim["metadata"]["annotations"]["thrifty.dev/qdrant-image"] == default
    cluster.kubectl("delete", "cachepolicy", "stepped", "-n", ns, "--wait=false")
    wait_gone(cluster, "cachepolicy", ns, "stepped")
    wait_gone(cluster, "persistentvolumeclaim", ns, "storage-stepped-qdrant-0")


def test_rbac_is_exactly_what_the_operator_uses(platform: Platform) -> None:
    cluster = platform.cluster
    role = json.loads(cluster.kubectl("get", "clusterrole", platform.account, "-o", "json").stdout)
    got = sorted(json.dumps(r, sort_keys=True) for r in role["rules"])
    assert got == sorted(json.dumps(dict(r), sort_keys=True) for r in RULES)
    who = f"system:serviceaccount:{platform.system_ns}:{platform.account}"
    for verb, resource, allowed in (
        ("patch", "deployments.apps", "yes"),
        ("create", "jobs.batch", "yes"),
        ("get", "secrets", "no"),
        ("create", "secrets", "yes"),  # the generated Redis passwords, create-if-absent
        ("patch", "secrets", "no"),
        ("patch", "networkpolicies.networking.k8s.io", "yes"),
        ("list", "pods", "no"),
        ("get", "pods", "yes"),  # a managed Qdrant's pod, by name, for why it does not run
        ("delete", "deployments.apps", "yes"),  # a managed store a CachePolicy stopped running
        # Never called by the operator, but owner-reference enforcement (OpenShift, on in the
        # test control plane) asks for it to change an existing claim's owners.
        ("delete", "persistentvolumeclaims", "yes"),
        ("delete", "configmaps", "yes"),  # a DistilledModel's superseded evaluation reports
        ("list", "deployments.apps", "no"),
        ("create", "clusterroles.rbac.authorization.k8s.io", "no"),
        ("update", "configmaps", "no"),
    ):
        result = cluster.kubectl(
            "auth", "can-i", verb, resource, "-n", platform.ns, f"--as={who}", check=False
        )
        assert result.stdout.strip() == allowed, (verb, resource, result.stdout)
    # Everything above converged with this account's token: the rules are enough.
    assert platform.operator.healthy()


def readme_finalizer_release() -> str:
    """The README's clean-up snippet for resources left behind by an uninstalled operator."""
    text = (ROOT / "README.md").read_text()
    after = text.index("If the operator is already gone")
    start = text.index("```bash\n", after) + len("```bash\n")
    return text[start : text.index("```", start)]


def test_the_readme_releases_resources_the_gone_operator_left(platform: Platform) -> None:
    """Without the operator, deleting a resource waits on its finalizer (kopf's timers need
    one) for ever; the README's snippet lets it go."""
    cluster, ns, op = platform.cluster, platform.ns, platform.operator
    cluster.apply(plain_gateway("orphan", ns))
    wait_for(
        lambda: (
            "thrifty.dev/finalizer"
            in (get(cluster, "llmgateway", ns, "orphan") or {})
            .get("metadata", {})
            .get("finalizers", [])
        ),
        timeout=60,
        message="the operator's finalizer on orphan",
    )
    op.stop()
    try:
        cluster.kubectl("delete", "llmgateway", "orphan", "-n", ns, "--wait=false")
        stuck = get(cluster, "llmgateway", ns, "orphan") or {}
        assert stuck["metadata"]["deletionTimestamp"]  # marked, held by the finalizer
        assert stuck["metadata"]["finalizers"] == ["thrifty.dev/finalizer"]
        subprocess.run(
            ["bash", "-euo", "pipefail", "-c", readme_finalizer_release()],
            env=cluster.env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        wait_gone(cluster, "llmgateway", ns, "orphan")
        # Only what was being deleted: a live resource keeps its finalizer.
        live = get(cluster, "llmgateway", ns, "thrifty") or {}
        assert live["metadata"]["finalizers"] == ["thrifty.dev/finalizer"]
    finally:
        op.start()


def test_deleting_the_resources_leaves_nothing_behind(platform: Platform) -> None:
    cluster, ns = platform.cluster, platform.ns
    for kind in KINDS:
        cluster.kubectl("delete", kind, "--all", "-n", ns, "--wait=false")
    for kind in KINDS:
        wait_for(_none_left(cluster, kind, ns), timeout=90, message=f"{kind} gone")
    wait_for(
        lambda: (
            not _items(cluster, "deployments", ns, "app.kubernetes.io/managed-by=thrifty-operator")
        ),
        timeout=90,
        message="children garbage-collected",
    )
    assert not _items(cluster, "statefulsets", ns)


def test_a_users_object_with_a_childs_name_is_left_alone(platform: Platform) -> None:
    """A ConfigMap of the user's own named as a gateway's child would be: the operator neither
    takes it over (it merged its config into it, made itself its controller, and the garbage
    collector deleted it with the gateway) nor reports the gateway ready: `Applied` is False,
    reason NameConflict, and the gateway's deletion leaves the user's object."""
    cluster, ns = platform.cluster, platform.ns
    cluster.kubectl(
        "create", "configmap", "mine-gateway-config", "-n", ns, "--from-literal=mine=precious"
    )
    gateway = plain_gateway("mine", ns)
    for key in ("cachePolicyRef", "autoscaling", "podDisruptionBudget"):
        gateway["spec"].pop(key)
    cluster.apply(gateway)
    wait_for(
        lambda: (
            condition(get(cluster, "llmgateway", ns, "mine"), "Applied").get("reason")
            == "NameConflict"
        ),
        timeout=60,
        message="the name conflict reported",
    )
    message = condition(get(cluster, "llmgateway", ns, "mine"), "Applied")["message"]
    assert "ConfigMap mine-gateway-config exists and is not this resource's" in message
    cm = get(cluster, "configmap", ns, "mine-gateway-config") or {}
    assert cm["data"] == {"mine": "precious"}
    assert not cm["metadata"].get("ownerReferences")
    cluster.kubectl("delete", "llmgateway", "mine", "-n", ns)
    wait_gone(cluster, "llmgateway", ns, "mine")
    kept = get(cluster, "configmap", ns, "mine-gateway-config") or {}
    assert kept.get("data") == {"mine": "precious"}  # not collected with the gateway
    cluster.kubectl("delete", "configmap", "mine-gateway-config", "-n", ns)
