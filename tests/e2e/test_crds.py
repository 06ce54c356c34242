"""The generated CRDs on the real API server: accepted, explained, validating, status kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.k8s import Cluster, KubectlError, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PLURALS = ("llmgateways", "cachepolicies", "batchqueues", "distilledmodels")


@pytest.fixture(scope="module")
def crds(k8s_cluster: Cluster) -> Cluster:
    k8s_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    for plural in PLURALS:
        # Polled rather than `kubectl wait`: on a CRD created a moment ago, before the API server
        # wrote any condition, kubectl wait fails at once (".status.conditions accessor error").
        def established(plural: str = plural) -> bool:
            crd = k8s_cluster.get_json("crd", f"{plural}.thrifty.dev")
            conditions = (crd.get("status") or {}).get("conditions") or []
            return any(
                c.get("type") == "Established" and c.get("status") == "True" for c in conditions
            )

        wait_for(established, message=f"crd/{plural}.thrifty.dev to be Established")
    # Established means served; discovery and the published OpenAPI schema follow a moment later
    # (and kubectl may hold a discovery cache from an earlier cluster on the same address).
    for plural in PLURALS:

        def explained(plural: str = plural) -> bool:
            return k8s_cluster.kubectl("explain", plural, check=False).returncode == 0

        wait_for(explained, message=f"kubectl explain {plural} to find the new resource")
    return k8s_cluster


def _resources(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and "apiVersion" in d]


def _apply_error(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> str:
    result = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False
    )
    assert result.returncode != 0, f"accepted: {manifest}"
    return result.stderr


def test_crds_are_established(crds: Cluster) -> None:
    for plural in PLURALS:
        crd = crds.get_json(f"crd/{plural}.thrifty.dev")
        established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert established["Established"] == "True"
        assert "thrifty" in crd["spec"]["names"]["categories"]


def test_explain_teaches_the_api(crds: Cluster) -> None:
    out = crds.kubectl("explain", "cachepolicy.spec").stdout
    assert "Desired state." in out and "deletionPolicy" in out
    assert "semantic" in out and "Semantic layer." in out
    deep = crds.kubectl("explain", "cachepolicy.spec.semantic.threshold").stdout
    assert "Minimum cosine similarity" in deep


def test_every_example_is_accepted(crds: Cluster, namespace: str) -> None:
    crds.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "secrets.yaml"))
    applied = 0
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in _resources(path):
            if doc["apiVersion"].startswith("thrifty.dev/"):
                crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
                applied += 1
    assert applied >= 4
    names = crds.kubectl("get", "thrifty", "-n", namespace, "-o", "name").stdout.split()
    assert len(names) == applied


def _policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "thrifty.dev/v1alpha1",
        "kind": "CachePolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_out_of_range_value_is_rejected_naming_the_field(crds: Cluster, namespace: str) -> None:
    error = _apply_error(crds, namespace, _policy("hot", {"semantic": {"threshold": 1.5}}))
    assert "spec.semantic.threshold" in error
    strict = {"semantic": {"guard": {"verifier": {"minScore": 1.2}}}}
    error = _apply_error(crds, namespace, _policy("strict", strict))
    assert "spec.semantic.guard.verifier.minScore" in error


def test_cel_rule_is_enforced_naming_the_field(crds: Cluster, namespace: str) -> None:
    error = _apply_error(crds, namespace, _policy("no-embedding", {"semantic": {"enabled": True}}))
    assert "spec.semantic.embedding" in error
    assert "a semantic layer needs an embedding model" in error
    queue = {
        "apiVersion": "thrifty.dev/v1alpha1",
        "kind": "BatchQueue",
        "metadata": {"name": "lines"},
        "spec": {"limits": {"maxLinesPerBatch": 10, "maxLinesPerJob": 100}},
    }
    assert "spec.limits.maxLinesPerJob" in _apply_error(crds, namespace, queue)
    queue["metadata"] = {"name": "waits"}
    queue["spec"] = {"retries": {"backoffSeconds": 600, "maxBackoffSeconds": 60}}
    error = _apply_error(crds, namespace, queue)
    assert "spec.retries" in error and "backoffSeconds must be <= maxBackoffSeconds" in error
    gateway = {
        "apiVersion": "thrifty.dev/v1alpha1",
        "kind": "LLMGateway",
        "metadata": {"name": "scaled"},
        "spec": {
            "providers": [{"name": "p", "baseUrl": "http://p/v1"}],
            "routes": [{"name": "m", "targets": [{"provider": "p", "model": "m"}]}],
            "autoscaling": {"enabled": True},
        },
    }
    error = _apply_error(crds, namespace, gateway)
    assert "spec.resources" in error and "autoscaling needs resources.requests.cpu" in error


def test_a_disruption_budget_that_blocks_every_drain_is_rejected(
    crds: Cluster, namespace: str
) -> None:
    """minAvailable >= the pods (replicas, or autoscaling.minReplicas) would never let a pod
    be evicted: `kubectl drain` and node upgrades would wait for ever."""
    base: dict[str, Any] = {
        "providers": [{"name": "p", "baseUrl": "http://p/v1"}],
        "routes": [{"name": "m", "targets": [{"provider": "p", "model": "m"}]}],
    }

    def gateway(name: str, **spec: Any) -> dict[str, Any]:
        body = {**base, **spec}
        return {
            "apiVersion": "thrifty.dev/v1alpha1",
            "kind": "LLMGateway",
            "metadata": {"name": name},
            "spec": body,
        }

    pdb = {"enabled": True, "minAvailable": 1}
    for bad in (
        gateway("solo", replicas=1, podDisruptionBudget=pdb),
        gateway("solo", replicas=1, podDisruptionBudget={"enabled": True}),  # default 1
        gateway(
            "scaled",
            replicas=5,
            resources={"requests": {"cpu": "100m"}},
            autoscaling={"enabled": True, "minReplicas": 2},
            podDisruptionBudget={"enabled": True, "minAvailable": 2},
        ),
    ):
        error = _apply_error(crds, namespace, bad)
        assert "spec.podDisruptionBudget.minAvailable" in error, error
        assert "must be below replicas" in error, error
    crds.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(gateway("pair", replicas=2, podDisruptionBudget=pdb)),
    )
    crds.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(gateway("idle", replicas=0, podDisruptionBudget=pdb)),
    )
    # an accepted gateway cannot be scaled into a blocking budget either
    result = crds.kubectl(
        "patch",
        "llmgateway",
        "pair",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"replicas": 1}}',
        check=False,
    )
    assert result.returncode != 0 and "must be below replicas" in result.stderr


def test_names_the_children_cannot_carry_are_rejected(crds: Cluster, namespace: str) -> None:
    """The operator names Services, Jobs and StatefulSets `<name>-<suffix>`: a dotted or long
    name would be accepted and then fail there, far from the user."""
    for name in ("cache.v1", "a" * 41, "9lives"):
        error = _apply_error(crds, namespace, _policy(name, {}))
        assert "metadata.name must be at most 40 lowercase letters" in error, name
    crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_policy("a" * 40, {})))


def test_a_managed_qdrants_volume_cannot_be_changed_in_place(crds: Cluster, namespace: str) -> None:
    sized = _policy("sized", {"stores": {"qdrant": {"storage": "2Gi"}}})
    crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(sized))
    sized["spec"]["stores"]["qdrant"]["storage"] = "5Gi"
    error = _apply_error(crds, namespace, sized)
    assert "stores.qdrant.storage and storageClassName cannot change" in error
    sized["spec"]["stores"]["qdrant"] = {"storage": "2Gi", "storageClassName": "fast"}
    assert "cannot change" in _apply_error(crds, namespace, sized)
    sized["spec"]["stores"]["qdrant"] = {"storage": "2Gi"}
    sized["spec"]["exact"] = {"ttlSeconds": 60}  # other edits still go through
    crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(sized))


def test_the_name_rule_spares_objects_created_before_it(crds: Cluster, namespace: str) -> None:
    """An object whose name the rule refuses, created under a CRD without it, can still be
    written (status, labels, finalizers) and deleted once the rule is in: it only applies on
    create."""
    path = ROOT / "crds" / "thrifty.dev_cachepolicies.yaml"
    crd = yaml.safe_load(path.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    older = json.loads(json.dumps(crd))
    older_schema = older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    older_schema.pop("x-kubernetes-validations")
    assert "metadata.name" in schema["x-kubernetes-validations"][0]["rule"]
    name = "a-policy-named-before-the-rule-" + "x" * 15  # 46 characters
    try:
        crds.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(older)
        )
        created = _policy(name, {})
        created["metadata"]["finalizers"] = ["thrifty.dev/test"]
        crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(created))
    finally:
        crds.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    crds.kubectl("label", "cachepolicy", name, "-n", namespace, "seen=yes")
    crds.kubectl("delete", "cachepolicy", name, "-n", namespace, "--wait=false")
    crds.kubectl(
        "patch",
        "cachepolicy",
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"metadata": {"finalizers": []}}',
    )
    wait_for(
        lambda: (
            crds.kubectl("get", "cachepolicy", name, "-n", namespace, check=False).returncode != 0
        ),
        message=f"cachepolicy {name} to be deleted",
    )
    # A new object with such a name is still refused.
    error = _apply_error(crds, namespace, _policy(name + "-2", {}))
    assert "metadata.name must be at most 40" in error


def test_status_survives_a_read_back(crds: Cluster, namespace: str) -> None:
    crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_policy("kept", {})))
    status = {
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Reconciled",
                "message": "all conditions are met",
                "observedGeneration": 1,
                "lastTransitionTime": "2026-11-27T12:00:00Z",
            }
        ],
        "keyspaceVersion": "v-abc",
        "collection": "thrifty-x-kept",
        "collectionJob": "kept-collection-0123abcd",
        "redisUrl": "redis://kept-redis.x.svc:6379/0",
        "qdrantUrl": "http://kept-qdrant.x.svc:6333",
        "qdrantImage": "docker.io/qdrant/qdrant:v1.12.4",
    }
    try:
        crds.kubectl(
            "patch",
            "cachepolicy",
            "kept",
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": status}),
        )
    except KubectlError as exc:  # pragma: no cover - shows the API server's reason
        raise AssertionError(str(exc)) from exc
    got = wait_for(
        lambda: crds.get_json("cachepolicy", "kept", "-n", namespace).get("status"),
        timeout=10,
        message="status",
    )
    assert got == status
