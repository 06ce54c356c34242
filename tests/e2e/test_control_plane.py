"""The local test control plane behaves like a real cluster: scheduling against fake GPU nodes,
controller-manager garbage collection, server-side apply."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.e2e.k8s import (
    CPU_NODES,
    GPU_NODES,
    GPU_PRODUCT,
    GPU_RESOURCE,
    Cluster,
    deployment,
    k8s_version,
    tool_path,
    wait_for,
)

pytestmark = pytest.mark.e2e


def _running_pods(cluster: Cluster, ns: str, app: str, count: int) -> list[dict[str, Any]] | None:
    pods = [
        p
        for p in cluster.pods(ns, f"app={app}")
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]
    return pods if len(pods) >= count else None


def _describe(cluster: Cluster, ns: str) -> str:
    return cluster.kubectl("get", "pods,replicasets,events", "-n", ns, "-o", "wide").stdout


def test_control_plane_is_up(k8s_cluster: Cluster) -> None:
    version = json.loads(k8s_cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == k8s_version()
    assert k8s_cluster.kubectl("get", "--raw=/readyz").stdout.strip() == "ok"
    server = k8s_cluster.kubectl("config", "view", "--minify", "-o", "json").stdout
    assert "https://127.0.0.1:" in server, "the apiserver must listen on loopback only"

    nodes = {n["metadata"]["name"]: n for n in k8s_cluster.get_json("nodes")["items"]}
    assert set(CPU_NODES) | set(GPU_NODES) <= set(nodes)
    for name in GPU_NODES:
        node = nodes[name]
        assert node["status"]["allocatable"][GPU_RESOURCE] == "8"
        assert node["status"]["capacity"][GPU_RESOURCE] == "8"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == GPU_PRODUCT
        assert node["metadata"]["labels"]["thrifty.dev/gpu"] == "true"
        assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node[
            "spec"
        ]["taints"]
    for name in CPU_NODES:
        assert GPU_RESOURCE not in nodes[name]["status"]["allocatable"]
        assert not nodes[name]["spec"].get("taints")


def test_namespace_gets_default_service_account(k8s_cluster: Cluster, namespace: str) -> None:
    # The serviceaccount controller in kube-controller-manager creates it.
    args = ("get", "serviceaccount", "default", "-n", namespace)
    wait_for(
        lambda: k8s_cluster.kubectl(*args, check=False).returncode == 0,
        timeout=30,
        message=f"the default ServiceAccount in {namespace}",
    )


def test_gpu_deployment_runs_on_gpu_node(k8s_cluster: Cluster, namespace: str) -> None:
    k8s_cluster.apply(deployment("student", gpus=1, tolerate_gpu=True), namespace=namespace)
    pods = wait_for(
        lambda: _running_pods(k8s_cluster, namespace, "student", 1),
        timeout=90,
        message=lambda: f"a Running GPU pod:\n{_describe(k8s_cluster, namespace)}",
    )
    (pod,) = pods
    assert pod["spec"]["nodeName"] in GPU_NODES
    node = k8s_cluster.get_json("node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == GPU_PRODUCT
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits[GPU_RESOURCE] == "1"


def test_pods_without_toleration_avoid_gpu_nodes(k8s_cluster: Cluster, namespace: str) -> None:
    k8s_cluster.apply(deployment("web", replicas=6), namespace=namespace)
    pods = wait_for(
        lambda: _running_pods(k8s_cluster, namespace, "web", 6),
        timeout=90,
        message=lambda: f"6 Running CPU pods:\n{_describe(k8s_cluster, namespace)}",
    )
    assert {p["spec"]["nodeName"] for p in pods} <= set(CPU_NODES)


def test_gpu_request_without_toleration_stays_pending(k8s_cluster: Cluster, namespace: str) -> None:
    k8s_cluster.apply(deployment("no-toleration", gpus=1), namespace=namespace)

    def unschedulable() -> dict[str, Any] | None:
        for pod in k8s_cluster.pods(namespace, "app=no-toleration"):
            for cond in pod["status"].get("conditions", []):
                if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                    return pod
        return None

    pod = wait_for(
        unschedulable,
        timeout=60,
        message=lambda: f"an Unschedulable pod:\n{_describe(k8s_cluster, namespace)}",
    )
    assert not pod["spec"].get("nodeName")
    assert pod["status"]["phase"] == "Pending"


def test_deleting_deployment_garbage_collects(k8s_cluster: Cluster, namespace: str) -> None:
    k8s_cluster.apply(deployment("gc", replicas=2), namespace=namespace)
    wait_for(
        lambda: _running_pods(k8s_cluster, namespace, "gc", 2),
        timeout=90,
        message=lambda: f"2 Running pods:\n{_describe(k8s_cluster, namespace)}",
    )
    (rs,) = k8s_cluster.get_json("replicasets", "-n", namespace, "-l", "app=gc")["items"]
    (owner,) = rs["metadata"]["ownerReferences"]
    assert owner["kind"] == "Deployment" and owner["name"] == "gc"

    # Background cascade: the apiserver removes the Deployment at once, the garbage collector
    # in kube-controller-manager then removes its ReplicaSet and pods.
    k8s_cluster.kubectl(
        "delete", "deployment", "gc", "-n", namespace, "--cascade=background", "--wait=false"
    )

    def collected() -> bool:
        rs = k8s_cluster.get_json("replicasets", "-n", namespace, "-l", "app=gc")["items"]
        return not rs and not k8s_cluster.pods(namespace, "app=gc")

    wait_for(
        collected,
        timeout=90,
        message=lambda: (
            f"ReplicaSet and pods to be collected:\n{_describe(k8s_cluster, namespace)}"
        ),
    )


def test_server_side_apply(k8s_cluster: Cluster, namespace: str) -> None:
    def cm(value: str) -> str:
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "ssa", "namespace": namespace},
                "data": {"owned": value},
            }
        )

    k8s_cluster.kubectl("apply", "--server-side", "--field-manager=alice", "-f", "-", input=cm("a"))
    obj = k8s_cluster.get_json("configmap", "ssa", "-n", namespace, "--show-managed-fields")
    assert obj["data"] == {"owned": "a"}
    managers = {m["manager"]: m for m in obj["metadata"]["managedFields"]}
    assert managers["alice"]["operation"] == "Apply"

    # Another manager changing the same field conflicts...
    conflict = k8s_cluster.kubectl(
        "apply", "--server-side", "--field-manager=bob", "-f", "-", input=cm("b"), check=False
    )
    assert conflict.returncode != 0
    assert "conflict" in conflict.stderr.lower()
    # ...until it forces the takeover.
    k8s_cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=bob",
        "-f",
        "-",
        input=cm("b"),
    )
    obj = k8s_cluster.get_json("configmap", "ssa", "-n", namespace, "--show-managed-fields")
    assert obj["data"] == {"owned": "b"}
    owners = {m["manager"] for m in obj["metadata"]["managedFields"] if "f:owned" in json.dumps(m)}
    assert owners == {"bob"}


@pytest.mark.parametrize("tool", ["helm", "kubeconform", "kwokctl"])
def test_cached_tools_run(tool: str) -> None:
    path = tool_path(tool)
    args = {"helm": ["version", "--short"], "kubeconform": ["-v"], "kwokctl": ["--version"]}
    result = subprocess.run(
        [str(path), *args[tool]], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
