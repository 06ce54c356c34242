"""The operator's guard rails on the real control plane (kwok nodes), with the chart's RBAC:
a CachePolicy finalizer never blocks its namespace's deletion.

One module-scoped install (chart, CRDs, the operator as the chart's ServiceAccount) watching one
namespace; tests run in file order and the last one deletes that namespace.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml

from tests.e2e.k8s import Cluster, wait_for
from tests.e2e.operator_helpers import (
    ROOT,
    OperatorProcess,
    create_volumes,
    delete_volumes,
    helm,
    restricted_namespace,
    service_account_kubeconfig,
    wait_ready,
)

pytestmark = pytest.mark.e2e


@dataclass
class Install:
    cluster: Cluster
    ns: str
    operator: OperatorProcess


@pytest.fixture(scope="module")
def install(k8s_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    cluster = k8s_cluster
    suffix = uuid.uuid4().hex[:6]
    ns, system_ns = f"guard-{suffix}", f"thrifty-guard-{suffix}"
    release = f"thrifty-guard-{suffix}"  # the chart names its objects after a "thrifty-*" release
    tmp = tmp_path_factory.mktemp("guards")
    operator: OperatorProcess | None = None
    try:
        restricted_namespace(cluster, ns)
        restricted_namespace(cluster, system_ns)
        create_volumes(cluster, ns, 6)
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        helm(cluster, "install", release, str(ROOT / "charts" / "thrifty"), "-n", system_ns)
        kubeconfig = service_account_kubeconfig(
            cluster, system_ns, f"{release}-operator", tmp / "operator.kubeconfig"
        )
        operator = OperatorProcess(kubeconfig, ns, tmp / "operator.log")
        operator.start()
        cluster.kubectl("apply", "-n", ns, "-f", str(ROOT / "examples" / "secrets.yaml"))
        yield Install(cluster, ns, operator)
    finally:
        if operator is not None:
            print(operator.tail(200))  # noqa: T201 - shown by pytest only when a test failed
            operator.stop()
        helm(cluster, "uninstall", release, "-n", system_ns, "--ignore-not-found")
        cluster.delete_namespace(ns)
        cluster.delete_namespace(system_ns)
        delete_volumes(cluster, ns)


def test_deleting_the_namespace_is_not_blocked_by_the_collection_finalizer(
    install: Install,
) -> None:
    """The namespace controller deletes the policy; its finalizer cannot create the delete Job
    in a terminating namespace (403): it warns and lets go instead of retrying forever."""
    cluster, ns = install.cluster, install.ns
    policy = yaml.safe_load((ROOT / "examples" / "cachepolicy.yaml").read_text())
    policy["metadata"] = {"name": "doomed", "namespace": ns}
    policy["spec"]["deletionPolicy"] = "Delete"
    cluster.apply(policy)
    obj = wait_ready(cluster, "cachepolicy", ns, "doomed", timeout=120)
    assert obj["metadata"]["finalizers"] == ["thrifty.dev/finalizer"]
    cluster.delete_namespace(ns)
    wait_for(
        lambda: cluster.kubectl("get", "namespace", ns, check=False).returncode != 0,
        timeout=180,
        interval=1.0,
        message=lambda: f"namespace {ns} to be deleted\n{install.operator.tail(40)}",
    )
    log = install.operator.tail(400)
    assert f"cachepolicy {ns}/doomed released" in log
    assert "refused the delete Job (403" in log and "may remain" in log
