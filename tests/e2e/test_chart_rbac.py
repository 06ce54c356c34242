"""The chart's RBAC follows `operator.watchNamespaces`: watching every namespace, one ClusterRole
(operator/thrifty_operator/rbac.py RULES); watching named namespaces, a Role and RoleBinding in
each (NAMESPACED_RULES) and cluster-wide only the thrifty.dev custom resources
(CUSTOM_RESOURCE_RULES, so their finalizers come off when a watched namespace is deleted): the
operator can touch nothing else in another namespace.
Rendered with `helm template`; the last test installs it and runs the operator on it."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.k8s import Cluster, tool_path, wait_for
from tests.e2e.operator_helpers import (
    OperatorProcess,
    get,
    helm,
    helm_run,
    install_watching,
    restricted_namespace,
    service_account_kubeconfig,
    uninstall_and_clean,
)
from thrifty_operator.rbac import (
    CLUSTER_RULES,
    CUSTOM_RESOURCE_RULES,
    NAMESPACED_RULES,
    RULES,
    Rule,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "thrifty"


def _rendered(
    *extra: str, only: str = "templates/rbac.yaml", namespace: str = "thrifty-system"
) -> list[dict[str, Any]]:
    show = ["--show-only", only] if only else []
    result = subprocess.run(
        [str(tool_path("helm")), "template", "t", str(CHART), "-n", namespace]
        + ["--kube-version", "1.36.3", *show, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _same(rules: list[dict[str, Any]], want: list[Rule]) -> bool:
    def norm(items: Any) -> list[str]:
        return sorted(json.dumps(dict(r), sort_keys=True) for r in items)

    return norm(rules) == norm(want)


def test_cluster_scoped_rules_are_only_the_cluster_scoped_resources() -> None:
    assert RULES == [*NAMESPACED_RULES, *CLUSTER_RULES]
    cluster = {
        (g, r) for rule in CLUSTER_RULES for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert cluster == {("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions")}
    for rule in CLUSTER_RULES:
        assert set(rule["verbs"]) <= {"list", "watch"}


def test_watching_every_namespace_is_one_cluster_role() -> None:
    docs = _rendered()
    assert [d["kind"] for d in docs] == ["ClusterRole", "ClusterRoleBinding"]
    assert _same(docs[0]["rules"], RULES)


def test_watching_named_namespaces_grants_only_those() -> None:
    docs = _rendered("--set", "operator.watchNamespaces={shop,ops}")
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    assert len(cluster_roles) == 1
    assert _same(cluster_roles[0]["rules"], CUSTOM_RESOURCE_RULES)
    [cluster_binding] = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert cluster_binding["roleRef"]["name"] == cluster_roles[0]["metadata"]["name"]
    assert cluster_binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "t-thrifty-operator", "namespace": "thrifty-system"}
    ]
    roles = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role"}
    bindings = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {"shop", "ops"}
    for ns, role in roles.items():
        assert _same(role["rules"], NAMESPACED_RULES), ns
        binding = bindings[ns]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "t-thrifty-operator", "namespace": "thrifty-system"}
        ]
    off = _rendered("--set", "rbac.create=false", "--set", "operator.watchNamespaces={a}", only="")
    assert not {d["kind"] for d in off} & {
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
    }


CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding")


def test_namespaced_installs_of_one_release_name_do_not_collide() -> None:
    """With operator.watchNamespaces the chart may go into several namespaces under the same
    release name (one operator per team); its cluster-scoped objects then carry the release
    namespace in their names, else helm refuses the second install (the ClusterRole belongs
    to another release namespace)."""
    names: dict[str, set[tuple[str, str]]] = {}
    for namespace in ("team-a", "team-b"):
        docs = _rendered("--set", f"operator.watchNamespaces={{{namespace}}}", namespace=namespace)
        cluster = [d for d in docs if d["kind"] in CLUSTER_SCOPED]
        assert len(cluster) == 2
        for doc in cluster:
            assert namespace in doc["metadata"]["name"], doc["metadata"]
            assert len(doc["metadata"]["name"]) <= 253
        [binding] = [d for d in cluster if d["kind"] == "ClusterRoleBinding"]
        [role] = [d for d in cluster if d["kind"] == "ClusterRole"]
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        names[namespace] = {(d["kind"], d["metadata"]["name"]) for d in cluster}
    assert not names["team-a"] & names["team-b"]
    # Watching every namespace (one operator per cluster): the name it always had.
    every = _rendered(namespace="team-a")
    assert {d["metadata"]["name"] for d in every} == {"t-thrifty-operator"}


def test_a_namespaced_operator_runs_on_its_roles_alone(
    k8s_cluster: Cluster, tmp_path: Path
) -> None:
    """Installed with watchNamespaces, the operator (with the chart's ServiceAccount token)
    still converges a gateway in its namespace, and may do nothing anywhere else."""
    cluster = k8s_cluster
    suffix = uuid.uuid4().hex[:6]
    ns, system_ns, other = f"e2e-rbac-{suffix}", f"e2e-rbac-sys-{suffix}", f"e2e-rbac-o-{suffix}"
    release = f"rb{suffix}"
    operator: OperatorProcess | None = None
    try:
        account = install_watching(cluster, release, system_ns, (ns,), other)
        who = f"--as=system:serviceaccount:{system_ns}:{account}"
        for verb, resource, where, allowed in (
            ("patch", "deployments.apps", ns, "yes"),
            ("create", "secrets", ns, "yes"),
            ("get", "secrets", ns, "no"),
            ("patch", "deployments.apps", other, "no"),
            ("create", "secrets", other, "no"),
            ("patch", "configmaps", "kube-system", "no"),
            ("create", "rolebindings.rbac.authorization.k8s.io", other, "no"),
            ("patch", "configmaps", ns, "yes"),
            ("delete", "configmaps", ns, "yes"),
            ("delete", "configmaps", other, "no"),
            # the custom resources alone, everywhere: their finalizers must come off even after
            # a terminating namespace lost the RoleBinding
            ("list", "llmgateways.thrifty.dev", other, "yes"),
            ("patch", "cachepolicies.thrifty.dev", other, "yes"),
            ("delete", "llmgateways.thrifty.dev", other, "no"),
            ("create", "llmgateways.thrifty.dev", other, "no"),
            ("list", "namespaces", other, "no"),
        ):
            result = cluster.kubectl("auth", "can-i", verb, resource, "-n", where, who, check=False)
            assert result.stdout.strip() == allowed, (verb, resource, where, result.stdout)
        listed = cluster.kubectl(
            "auth", "can-i", "list", "customresourcedefinitions", who, check=False
        )
        assert listed.stdout.strip() == "no"
        kubeconfig = service_account_kubeconfig(
            cluster, system_ns, account, tmp_path / "operator.kubeconfig"
        )
        operator = OperatorProcess(kubeconfig, ns, tmp_path / "operator.log")
        operator.start()
        cluster.kubectl("apply", "-n", ns, "-f", str(ROOT / "examples" / "secrets.yaml"))
        gateway = yaml.safe_load((ROOT / "examples" / "llmgateway.yaml").read_text())
        gateway["metadata"] = {"name": "solo", "namespace": ns}
        for key in ("batchQueueRef", "cachePolicyRef", "autoscaling", "podDisruptionBudget"):
            gateway["spec"].pop(key, None)
        for route in gateway["spec"].get("routes", []):
            route.pop("cachePolicyRef", None)
        gateway["spec"]["replicas"] = 1
        cluster.apply(gateway)
        wait_for(
            lambda: get(cluster, "deployment", ns, "solo-gateway"),
            timeout=90,
            message=lambda: f"the gateway Deployment\n{operator.tail() if operator else ''}",
        )
        assert get(cluster, "configmap", ns, "solo-gateway-config") is not None
        assert operator.healthy()
    finally:
        uninstall_and_clean(cluster, operator, release, system_ns, (ns, other))


def test_a_second_installation_watching_the_same_namespaces_is_refused(
    k8s_cluster: Cluster,
) -> None:
    """Two operators on the same resources undo each other's changes for ever (the gateway's
    image flipped between their two images every few seconds): helm refuses an installation
    whose namespaces overlap another's (every namespace overlaps all), says which release,
    and lets installations with namespaces of their own, and upgrades, through."""
    cluster = k8s_cluster
    suffix = uuid.uuid4().hex[:6]
    chart = str(CHART)
    sys_a, sys_b, sys_c, p, q = (f"e2e-{x}-{suffix}" for x in ("sa", "sb", "sc", "p", "q"))
    releases: list[tuple[str, str]] = []

    def install(release: str, ns: str, *watched: str) -> subprocess.CompletedProcess[str]:
        extra = ["--set", f"operator.watchNamespaces={{{','.join(watched)}}}"] if watched else []
        result = helm_run(cluster, "install", release, chart, "-n", ns, *extra)
        if result.returncode == 0:
            releases.append((release, ns))
        return result

    try:
        for ns in (sys_a, sys_b, sys_c, p, q):
            restricted_namespace(cluster, ns)
        assert install(f"a{suffix}", sys_a).returncode == 0  # every namespace
        refused = install(f"b{suffix}", sys_b, p)
        assert refused.returncode != 0
        assert f"release a{suffix} in namespace {sys_a}" in refused.stderr, refused.stderr
        assert "already watches every namespace" in refused.stderr
        helm(cluster, "upgrade", f"a{suffix}", chart, "-n", sys_a)  # not another installation
        helm(cluster, "uninstall", f"a{suffix}", "-n", sys_a)
        releases.clear()
        assert install(f"b{suffix}", sys_b, p).returncode == 0
        assert install(f"c{suffix}", sys_c, q).returncode == 0  # namespaces of its own
        overlapping = install(f"d{suffix}", sys_a, q)
        assert overlapping.returncode != 0
        assert f"release c{suffix} in namespace {sys_c}) already watches {q}" in (
            overlapping.stderr
        )
        assert install(f"d{suffix}", sys_a).returncode != 0  # every namespace: overlaps both
        for release, ns in releases:
            helm(cluster, "uninstall", release, "-n", ns)
        releases.clear()
        # an older chart's namespaced install (no annotation: its namespaces are unknown)
        # overlaps an installation watching every namespace, and no namespaced one
        cluster.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {
                    "name": f"old{suffix}-thrifty-operator-{sys_c}",
                    "labels": {"app.kubernetes.io/name": "thrifty-operator"},
                    "annotations": {
                        "meta.helm.sh/release-name": f"old{suffix}",
                        "meta.helm.sh/release-namespace": sys_c,
                    },
                },
                "rules": [],
            }
        )
        assert f"release old{suffix} in namespace {sys_c}" in install(f"e{suffix}", sys_a).stderr
        assert install(f"e{suffix}", sys_a, p).returncode == 0
    finally:
        cluster.kubectl(
            "delete", "clusterrole", f"old{suffix}-thrifty-operator-{sys_c}", "--ignore-not-found"
        )
        for release, ns in releases:
            helm_run(cluster, "uninstall", release, "-n", ns)
        for ns in (sys_a, sys_b, sys_c, p, q):
            cluster.delete_namespace(ns)
