"""The operator's permissions: no wildcards, and every kind it applies is covered."""

from __future__ import annotations

from typing import Any

from tests.unit.test_operator_builders import MANIFESTS, example, owner
from thrifty_core.api import CachePolicy
from thrifty_operator.apply import KINDS
from thrifty_operator.builders import cache
from thrifty_operator.builders.defaults import Defaults
from thrifty_operator.rbac import CLUSTER_RULES, CUSTOM_RESOURCE_RULES, NAMESPACED_RULES, RULES


def _allowed(group: str, resource: str) -> set[str]:
    verbs: set[str] = set()
    for rule in RULES:
        if group in rule["apiGroups"] and resource in rule["resources"]:
            verbs |= set(rule["verbs"])
    return verbs


def test_no_wildcards() -> None:
    for rule in RULES:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field]


def test_every_built_kind_can_be_applied() -> None:
    for manifest in MANIFESTS:
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        group = api_version.split("/")[0] if "/" in api_version else ""
        resource = KINDS[(api_version, kind)].plural
        assert {"get", "create", "patch"} <= _allowed(group, resource), kind


def test_the_custom_resources_are_watched_and_their_status_written() -> None:
    for plural in ("llmgateways", "cachepolicies", "batchqueues", "distilledmodels"):
        assert {"list", "watch", "patch"} <= _allowed("thrifty.dev", plural)
        assert _allowed("thrifty.dev", f"{plural}/status") == {"patch"}
        # children carry blockOwnerDeletion (owner-reference enforcement needs this)
        assert _allowed("thrifty.dev", f"{plural}/finalizers") == {"update"}
    assert _allowed("", "events") == {"create"}
    # Secrets are mounted by kubelet and never read; the operator only creates the generated
    # Redis passwords (create-if-absent).
    assert _allowed("", "secrets") == {"create"}
    # Deleted only when a CachePolicy stops running a managed store (with its workload).
    assert {"get", "create", "patch", "delete"} == _allowed("networking.k8s.io", "networkpolicies")
    assert "list" not in _allowed("apps", "deployments")  # by name, never listed


def test_the_eval_role_grants_nothing_the_operator_lacks() -> None:
    roles = [m for m in MANIFESTS if m["kind"] == "Role"]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for resource in rule["resources"]:
                assert set(rule["verbs"]) <= _allowed(rule["apiGroups"][0], resource)


def test_a_namespaced_operator_needs_nothing_cluster_scoped() -> None:
    """The chart grants NAMESPACED_RULES with a Role per watched namespace: every resource
    they name lives in a namespace. CLUSTER_RULES (CRD and namespace watches) serve only an
    operator that watches every namespace."""
    assert NAMESPACED_RULES[: len(CUSTOM_RESOURCE_RULES)] == CUSTOM_RESOURCE_RULES
    assert RULES == [*NAMESPACED_RULES, *CLUSTER_RULES]
    cluster_scoped = {"namespaces", "customresourcedefinitions", "clusterroles", "nodes"}
    for rule in NAMESPACED_RULES:
        assert not cluster_scoped & set(rule["resources"]), rule
    for rule in CLUSTER_RULES:
        assert set(rule["verbs"]) <= {"list", "watch"}
    for manifest in MANIFESTS:
        assert KINDS[(manifest["apiVersion"], manifest["kind"])].namespaced, manifest["kind"]


def test_a_namespaced_operator_can_release_its_finalizers_without_its_role() -> None:
    """Deleting a watched namespace deletes the operator's RoleBinding there at once; the
    cluster-wide CUSTOM_RESOURCE_RULES still let kopf watch the custom resources and patch its
    finalizer off, and grant nothing but the thrifty.dev resources and their status."""
    verbs: dict[str, set[str]] = {}
    for rule in CUSTOM_RESOURCE_RULES:
        assert rule["apiGroups"] == ["thrifty.dev"]
        for resource in rule["resources"]:
            verbs.setdefault(resource, set()).update(rule["verbs"])
    for plural in ("llmgateways", "cachepolicies", "batchqueues", "distilledmodels"):
        assert verbs[plural] == {"get", "list", "watch", "patch"}
        assert verbs[f"{plural}/status"] == {"patch"}
    assert len(verbs) == 8


def test_old_evaluation_reports_can_be_deleted() -> None:
    assert _allowed("", "configmaps") == {"get", "create", "patch", "delete"}
    assert "delete" not in _allowed("", "serviceaccounts")


def _owner_refs(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    return {
        (m["kind"], m["metadata"]["name"]): m["metadata"].get("ownerReferences") for m in manifests
    }


def test_objects_whose_owner_references_change_may_be_deleted() -> None:
    """Owner-reference enforcement (OpenShift; the upstream OwnerReferencesPermissionEnforcement
    admission plugin) refuses a change to an existing object's ownerReferences (403) unless
    the caller may `delete` it: every kind whose references the operator sets or drops after
    creation needs it. They change when deletionPolicy flips (the Redis claim), and a Delete
    policy co-owns its Qdrant's claim, made by the StatefulSet controller (`claim_ownership`).
    A Delete CachePolicy otherwise never got past its first reconcile (ApplyRejected)."""
    changed: set[tuple[str, str]] = set()
    built = {}
    for deletion in ("Delete", "Retain"):
        body = example("cachepolicy")
        body["spec"]["deletionPolicy"] = deletion
        built[deletion] = _owner_refs(
            cache.build_stores(CachePolicy.model_validate(body), owner(body), Defaults())
        )
    for key, refs in built["Delete"].items():
        if built["Retain"].get(key, refs) != refs:
            changed.add(key)
    body = example("cachepolicy")
    body["spec"]["deletionPolicy"] = "Delete"
    claim = {"metadata": {"name": "storage-default-cache-qdrant-0", "ownerReferences": []}}
    adopt = cache.claim_ownership(CachePolicy.model_validate(body), owner(body), claim)
    assert adopt is not None and adopt["metadata"]["ownerReferences"]
    changed.add((adopt["kind"], adopt["metadata"]["name"]))
    assert ("PersistentVolumeClaim", "storage-default-cache-qdrant-0") in changed
    assert any(kind == "PersistentVolumeClaim" and "redis" in name for kind, name in changed)
    for kind, name in changed:
        resource = KINDS[("v1", kind)].plural  # (core kinds, as it happens)
        assert {"patch", "delete"} <= _allowed("", resource), (kind, name)
    # The references carry blockOwnerDeletion or not; enforcement then also asks for update on
    # the owner's finalizers, granted above for every kind.
    assert _allowed("thrifty.dev", "cachepolicies/finalizers") == {"update"}
