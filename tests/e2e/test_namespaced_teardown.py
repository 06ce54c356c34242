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
    install_watching,
    service_account_kubeconfig,
    uninstall_and_clean,
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
        account = install_watching(cluster, release, system_ns, (ns,))
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
        uninstall_and_clean(cluster, operator, release, system_ns, (ns,))


def _stamp(cluster: Cluster, kind: str, ns: str, name: str) -> str | None:
    obj = get(cluster, kind, ns, name)
    annotations = (obj or {}).get("metadata", {}).get("annotations") or {}
    return annotations.get("thrifty.dev/operator")


def test_a_namespace_dropped_from_the_watch_list_is_released(
    k8s_cluster: Cluster, tmp_path: Path
) -> None:
    """Restarted without one of its namespaces, the operator takes its finalizer off its own
    resources there (so deleting them does not wait forever), and only off its own."""
    cluster = k8s_cluster
    suffix = uuid.uuid4().hex[:6]
    kept, dropped = f"e2e-keep-{suffix}", f"e2e-drop-{suffix}"
    system_ns, release = f"e2e-drop-sys-{suffix}", f"dr{suffix}"
    instance = f"{system_ns}/{release}"
    chart = str(ROOT / "charts" / "thrifty")
    operator: OperatorProcess | None = None
    try:
        account = install_watching(cluster, release, system_ns, (kept, dropped))
        rendered = helm(cluster, "get", "manifest", release, "-n", system_ns)
        assert f'value: "{instance}"' in rendered  # what the chart hands the operator
        kubeconfig = service_account_kubeconfig(
            cluster, system_ns, account, tmp_path / "operator.kubeconfig"
        )
        operator = OperatorProcess(
            kubeconfig, kept, tmp_path / "operator.log", also_watch=(dropped,), instance=instance
        )
        operator.start()
        for ns in (kept, dropped):
            cluster.kubectl("apply", "-n", ns, "-f", str(ROOT / "examples" / "secrets.yaml"))
        placed = [(kept, "g-kept"), (dropped, "g-dropped"), (dropped, "g-other")]
        for ns, name in placed:
            cluster.apply(_gateway(ns, name))
        op = operator

        def stamped() -> bool:
            return all(
                _finalized(cluster, "llmgateway", ns, n)
                and _stamp(cluster, "llmgateway", ns, n) == instance
                for ns, n in placed
            )

        wait_for(stamped, timeout=90, message=lambda: f"finalizers and stamps\n{op.tail(40)}")
        operator.stop()
        # Another installation's resource (as if another release had reconciled it).
        cluster.kubectl(
            "annotate", "llmgateway", "g-other", "-n", dropped, "--overwrite",
            "thrifty.dev/operator=elsewhere/other",
        )  # fmt: skip
        helm(
            cluster, "upgrade", release, chart, "-n", system_ns,
            "--set", f"operator.watchNamespaces={{{kept}}}",
        )  # fmt: skip
        operator = OperatorProcess(kubeconfig, kept, tmp_path / "operator.log", instance=instance)
        operator.start()
        op = operator
        wait_for(
            lambda: not _finalized(cluster, "llmgateway", dropped, "g-dropped"),
            timeout=60,
            message=lambda: f"g-dropped released\n{op.tail(40)}",
        )
        assert _stamp(cluster, "llmgateway", dropped, "g-dropped") is None
        assert f"llmgateway {dropped}/g-dropped released" in operator.tail(400)
        # Not its own: left as it was; still watched: kept.
        assert _finalized(cluster, "llmgateway", dropped, "g-other")
        assert _stamp(cluster, "llmgateway", dropped, "g-other") == "elsewhere/other"
        assert _finalized(cluster, "llmgateway", kept, "g-kept")
        assert _stamp(cluster, "llmgateway", kept, "g-kept") == instance
        # Deleting the released resource no longer waits for an operator.
        cluster.kubectl("delete", "llmgateway", "g-dropped", "-n", dropped, "--wait=false")
        wait_for(
            lambda: get(cluster, "llmgateway", dropped, "g-dropped") is None,
            timeout=30,
            message="g-dropped deleted",
        )
        assert operator.healthy()
    finally:
        uninstall_and_clean(cluster, operator, release, system_ns, (kept, dropped))
