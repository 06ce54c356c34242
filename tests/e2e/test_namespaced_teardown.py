"""A namespaced install (`operator.watchNamespaces`) never holds its namespace in Terminating.

The namespace controller deletes the operator's RoleBinding in a terminating namespace at once,
while the custom resources still carry the operator's finalizer; the chart's ClusterRole on the
thrifty.dev resources alone lets the operator, as the chart's ServiceAccount, still see their
deletion and take its finalizer off (and the CachePolicy collection finalizer lets go when its
delete Job cannot be made there).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.k8s import Cluster, wait_for
from tests.e2e.operator_helpers import (
    ROOT,
    OperatorProcess,
    get,
    helm,
    restricted_namespace,
    service_account_kubeconfig,
)

pytestmark = pytest.mark.e2e

FINALIZER = "thrifty.dev/finalizer"


def _gateway(ns: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "llmgateway.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": ns}
    for key in ("batchQueueRef", "cachePolicyRef", "autoscaling", "podDisruptionBudget"):
        body["spec"].pop(key, None)
    for route in body["spec"].get("routes", []):
        route.pop("cachePolicyRef", None)
    body["spec"]["replicas"] = 1
    return body


def _finalized(cluster: Cluster, kind: str, ns: str, name: str) -> bool:
    obj = get(cluster, kind, ns, name)
    return obj is not None and FINALIZER in (obj["metadata"].get("finalizers") or [])


def test_deleting_a_watched_namespace_is_not_blocked_by_the_finalizers(
    k8s_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = k8s_cluster
    suffix = uuid.uuid4().hex[:6]
    ns, system_ns, release = f"e2e-nsdel-{suffix}", f"e2e-nsdel-sys-{suffix}", f"nd{suffix}"
    operator: OperatorProcess | None = None
    try:
        for name in (ns, system_ns):
            restricted_namespace(cluster, name)
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        helm(
            cluster,
            "install",
            release,
            str(ROOT / "charts" / "thrifty"),
            "-n",
            system_ns,
            "--set",
            f"operator.watchNamespaces={{{ns}}}",
        )
        account = f"{release}-thrifty-operator"
        kubeconfig = service_account_kubeconfig(
            cluster, system_ns, account, tmp_path / "operator.kubeconfig"
        )
        operator = OperatorProcess(kubeconfig, ns, tmp_path / "operator.log")
        operator.start()
        cluster.kubectl("apply", "-n", ns, "-f", str(ROOT / "examples" / "secrets.yaml"))
        gateways = [f"g{i}" for i in range(3)]
        for name in gateways:
            cluster.apply(_gateway(ns, name))
        policy = yaml.safe_load((ROOT / "examples" / "cachepolicy.yaml").read_text())
        policy["metadata"] = {"name": "doomed", "namespace": ns}
        policy["spec"]["deletionPolicy"] = "Delete"
        cluster.apply(policy)
        op = operator

        def held() -> bool:
            return all(
                _finalized(cluster, "llmgateway", ns, n)
                and get(cluster, "deployment", ns, f"{n}-gateway") is not None
                for n in gateways
            ) and _finalized(cluster, "cachepolicy", ns, "doomed")

        wait_for(held, timeout=90, message=lambda: f"finalizers and Deployments\n{op.tail(40)}")

        cluster.delete_namespace(ns)

        def leftovers() -> str:
            return cluster.kubectl(
                "get",
                "llmgateways,cachepolicies",
                "-n",
                ns,
                "-o",
                "custom-columns=NAME:.metadata.name,FINALIZERS:.metadata.finalizers",
                check=False,
            ).stdout

        wait_for(
            lambda: cluster.kubectl("get", "namespace", ns, check=False).returncode != 0,
            timeout=60,
            interval=1.0,
            message=lambda: f"namespace {ns} to be deleted\n{leftovers()}\n{op.tail(40)}",
        )
        log = operator.tail(400)
        assert f"cachepolicy {ns}/doomed released" in log
        assert operator.healthy()
    finally:
        if operator is not None:
            print(operator.tail(100))  # noqa: T201 - shown by pytest only when a test failed
            operator.stop()
        helm(cluster, "uninstall", release, "-n", system_ns, "--ignore-not-found")
        for name in (ns, system_ns):
            if cluster.kubectl("get", "namespace", name, check=False).returncode == 0:
                for kind in ("llmgateways", "cachepolicies"):
                    for item in cluster.get_json(kind, "-n", name)["items"]:
                        cluster.kubectl(
                            "patch",
                            kind,
                            item["metadata"]["name"],
                            "-n",
                            name,
                            "--type=merge",
                            "-p",
                            '{"metadata":{"finalizers":null}}',
                            check=False,
                        )
            cluster.delete_namespace(name)
