"""The exact API permissions the operator uses (the chart's RBAC must equal this).

Server-side apply of a new object needs `create` as well as `patch`; reads are `get`; kopf
watches the custom resources (`list`, `watch`), patches them (finalizers, its annotations) and
their status, posts Events, and, watching every namespace, watches CRDs (to notice new ones)
and namespaces. Secrets are only created (generated store passwords and student API keys,
create-if-absent): never read, listed, patched or deleted, so the operator cannot see any
Secret's value.

`NAMESPACED_RULES` are everything the operator does inside a watched namespace: the chart
grants them with a Role and RoleBinding in each of `operator.watchNamespaces`, or cluster-wide
when it watches every namespace. `CLUSTER_RULES` are used only then: an operator given exact
namespaces does not scan (`settings.configure_kopf`) and needs no cluster-scoped resource.

`CUSTOM_RESOURCE_RULES` (the first rules of `NAMESPACED_RULES`) are also granted cluster-wide
to an operator given exact namespaces, with a ClusterRole and ClusterRoleBinding: when a watched
namespace is deleted, the namespace controller deletes the operator's RoleBinding there at once,
while the custom resources still carry the operator's finalizer; without this kopf could no
longer watch them nor patch its finalizer off (403), and the namespace stayed Terminating
forever. The same rules let an operator restarted without one of its namespaces list its
resources cluster-wide and release its finalizers there (`release`). Everything else (Secrets,
Deployments, Jobs...) stays namespaced.
"""

from __future__ import annotations

from typing import TypedDict


class Rule(TypedDict):
    apiGroups: list[str]
    resources: list[str]
    verbs: list[str]


APPLY = ["get", "create", "patch"]

# What kopf needs to follow the custom resources to their deletion and take its finalizer off
# (it patches the object; a handler's last status patch may come with it).
CUSTOM_RESOURCE_RULES: list[Rule] = [
    {
        "apiGroups": ["thrifty.dev"],
        "resources": ["llmgateways", "cachepolicies", "batchqueues", "distilledmodels"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {
        "apiGroups": ["thrifty.dev"],
        "resources": [
            "llmgateways/status",
            "cachepolicies/status",
            "batchqueues/status",
            "distilledmodels/status",
        ],
        "verbs": ["patch"],
    },
]

NAMESPACED_RULES: list[Rule] = [
    *CUSTOM_RESOURCE_RULES,
    # Children name their owner with `blockOwnerDeletion: true`; clusters that enforce owner
    # references (OpenShift's OwnerReferencesPermissionEnforcement) then require `update` on
    # the owner's finalizers, and refuse every child (403) without it.
    {
        "apiGroups": ["thrifty.dev"],
        "resources": [
            "llmgateways/finalizers",
            "cachepolicies/finalizers",
            "batchqueues/finalizers",
            "distilledmodels/finalizers",
        ],
        "verbs": ["update"],
    },
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": APPLY},
    # Owner references set or changed on an existing claim (a Delete CachePolicy co-owns its
    # Qdrant's claim, `cache.claim_ownership`; the Redis claim gains or loses its owner when
    # deletionPolicy flips): owner-reference enforcement (OpenShift, the upstream
    # OwnerReferencesPermissionEnforcement admission plugin) refuses such a change (403)
    # unless the caller may `delete` the object. The operator itself never deletes a claim.
    {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": [*APPLY, "delete"]},
    # Superseded evaluation-report ConfigMaps of a DistilledModel are deleted.
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": [*APPLY, "delete"]},
    # A store a CachePolicy no longer runs is removed (its workload, Service, NetworkPolicy).
    {"apiGroups": [""], "resources": ["services"], "verbs": [*APPLY, "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    # A managed Qdrant's pod, read by name when its StatefulSet is not ready, for why (an image
    # it cannot pull, a crash loop): the StatefulSet does not say.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    {
        "apiGroups": ["apps"],
        "resources": ["deployments", "statefulsets"],
        "verbs": [*APPLY, "delete"],
    },
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": [*APPLY, "delete"]},
    {
        "apiGroups": ["autoscaling"],
        "resources": ["horizontalpodautoscalers"],
        "verbs": [*APPLY, "delete"],
    },
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": [*APPLY, "delete"]},
    {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["networkpolicies"],
        "verbs": [*APPLY, "delete"],
    },
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles", "rolebindings"],
        "verbs": APPLY,
    },
]

CLUSTER_RULES: list[Rule] = [
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["list", "watch"],
    },
]

# The ClusterRole of an operator watching every namespace.
RULES: list[Rule] = [*NAMESPACED_RULES, *CLUSTER_RULES]
