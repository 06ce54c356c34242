"""Dependencies that go away, on the real control plane (kwok nodes) with the chart's RBAC:
a gateway whose BatchQueue and CachePolicy are deleted stops mounting their Secrets and
volume; a CachePolicy whose semantic layer is turned off keeps its Qdrant volume (with
deletionPolicy Delete, until the policy goes). One module-scoped install; tests in order."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.e2e.k8s import Cluster, wait_for
from tests.e2e.operator_helpers import (
    ROOT,
    condition,
    get,
    installed_operator,
    wait_gone,
    wait_ready,
)

pytestmark = pytest.mark.e2e


@dataclass
class Install:
    cluster: Cluster
    ns: str


@pytest.fixture(scope="module")
def install(k8s_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    suffix = uuid.uuid4().hex[:6]
    ns, system_ns = f"deps-{suffix}", f"thrifty-deps-{suffix}"
    tmp = tmp_path_factory.mktemp("deps")
    with installed_operator(k8s_cluster, ns, system_ns, f"thrifty-deps-{suffix}", tmp, 10):
        yield Install(k8s_cluster, ns)


def _example(kind: str, ns: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((ROOT / "examples" / f"{kind}.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": ns}
    return body


def _volumes(cluster: Cluster, ns: str, deployment: str) -> str:
    deploy = get(cluster, "deployment", ns, deployment) or {}
    return json.dumps(deploy.get("spec", {}).get("template", {}).get("spec", {}).get("volumes"))


def test_a_gateway_lets_go_of_a_deleted_queue_and_policy(install: Install) -> None:
    cluster, ns = install.cluster, install.ns
    policy = _example("cachepolicy", ns, "gone-cache")
    policy["spec"]["semantic"] = {"enabled": False}
    gateway = _example("llmgateway", ns, "gw")
    for key in ("autoscaling", "podDisruptionBudget"):
        gateway["spec"].pop(key)
    gateway["spec"].update(
        replicas=1, batchQueueRef={"name": "gone-jobs"}, cachePolicyRef={"name": "gone-cache"}
    )
    cluster.apply(policy)
    cluster.apply(_example("batchqueue", ns, "gone-jobs"))
    cluster.apply(gateway)
    wait_ready(cluster, "batchqueue", ns, "gone-jobs", timeout=150)
    wait_ready(cluster, "cachepolicy", ns, "gone-cache", timeout=150)
    wait_ready(cluster, "llmgateway", ns, "gw", timeout=150)
    before = _volumes(cluster, ns, "gw-gateway")
    assert "gone-jobs-files" in before and "gone-jobs-redis-auth" in before
    assert "gone-cache-redis-auth" in before
    cluster.kubectl("delete", "batchqueue", "gone-jobs", "-n", ns)
    cluster.kubectl("delete", "cachepolicy", "gone-cache", "-n", ns)

    def let_go() -> bool:
        volumes = _volumes(cluster, ns, "gw-gateway")
        return "gone-jobs" not in volumes and "gone-cache" not in volumes

    wait_for(let_go, timeout=90, message="the gateway Deployment without the deleted ones")
    wait_gone(cluster, "persistentvolumeclaim", ns, "gone-jobs-files", timeout=90)

    def reported() -> dict[str, Any] | None:
        # "is being deleted" while their finalizers run (the gateway rolls then), "not found"
        # once they are gone
        ready = condition(get(cluster, "llmgateway", ns, "gw"), "Ready")
        message = str(ready.get("message", ""))
        gone = "BatchQueue 'gone-jobs' not found" in message
        gone = gone and "CachePolicy 'gone-cache' not found" in message
        return ready if ready.get("reason") == "MissingReference" and gone else None

    wait_for(reported, timeout=60, message="gw Ready=False MissingReference, both not found")
    cluster.kubectl("delete", "llmgateway", "gw", "-n", ns, "--wait=true")


def test_an_off_semantic_layer_keeps_its_volume_until_the_policy_goes(install: Install) -> None:
    cluster, ns = install.cluster, install.ns
    policy = _example("cachepolicy", ns, "vectors")
    policy["spec"]["deletionPolicy"] = "Delete"
    cluster.apply(policy)
    obj = wait_ready(cluster, "cachepolicy", ns, "vectors", timeout=180)
    claim = "storage-vectors-qdrant-0"
    assert get(cluster, "persistentvolumeclaim", ns, claim) is not None
    cluster.kubectl(
        "patch",
        "cachepolicy",
        "vectors",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec": {"semantic": {"enabled": false}}}',
    )
    wait_gone(cluster, "statefulset", ns, "vectors-qdrant", timeout=90)
    wait_gone(cluster, "pod", ns, "vectors-qdrant-0", timeout=90)
    kept = get(cluster, "persistentvolumeclaim", ns, claim) or {}
    assert kept and not kept["metadata"].get("deletionTimestamp"), kept
    owners = [r["uid"] for r in kept["metadata"].get("ownerReferences") or []]
    assert owners == [obj["metadata"]["uid"]]
    wait_ready(cluster, "cachepolicy", ns, "vectors", timeout=60)
    cluster.kubectl("delete", "cachepolicy", "vectors", "-n", ns, "--wait=true", timeout=180)
    wait_gone(cluster, "persistentvolumeclaim", ns, claim, timeout=90)
