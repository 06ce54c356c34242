"""kopf indexes: every Thrifty object by key, and who references whom (no list calls)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from .common import plain

Key = tuple[str, str]

GATEWAYS = "thrifty_gateways"
CACHEPOLICIES = "thrifty_cachepolicies"
BATCHQUEUES = "thrifty_batchqueues"
DISTILLEDMODELS = "thrifty_distilledmodels"
GATEWAYS_BY_POLICY = "thrifty_gateways_by_policy"
GATEWAYS_BY_QUEUE = "thrifty_gateways_by_queue"
STUDENTS_BY_GATEWAY = "thrifty_students_by_gateway"

BY_KIND = {
    "LLMGateway": GATEWAYS,
    "CachePolicy": CACHEPOLICIES,
    "BatchQueue": BATCHQUEUES,
    "DistilledModel": DISTILLEDMODELS,
}


def by_key(body: kopf.Body, namespace: str | None, name: str | None, **_: Any) -> dict[Key, Any]:
    """The object itself, as a plain dict, under (namespace, name)."""
    return {(namespace or "default", name or ""): plain(body)}


def gateways_by_policy(
    spec: kopf.Spec, namespace: str | None, name: str | None, **_: Any
) -> dict[Key, str]:
    """(namespace, cache policy) -> gateway, for the gateway-wide and every route's policy."""
    refs = {r["cachePolicyRef"]["name"] for r in spec.get("routes", []) if r.get("cachePolicyRef")}
    if spec.get("cachePolicyRef"):
        refs.add(spec["cachePolicyRef"]["name"])
    return {(namespace or "default", ref): name or "" for ref in refs}


def gateways_by_queue(
    spec: kopf.Spec, namespace: str | None, name: str | None, **_: Any
) -> dict[Key, str]:
    ref = spec.get("batchQueueRef")
    return {(namespace or "default", ref["name"]): name or ""} if ref else {}


def students_by_gateway(
    spec: kopf.Spec, namespace: str | None, name: str | None, **_: Any
) -> dict[Key, str]:
    gateway = spec.get("teacher", {}).get("gatewayRef", {}).get("name")
    return {(namespace or "default", gateway): name or ""} if gateway else {}


def _age_key(body: Mapping[str, Any] | None, name: str) -> tuple[str, str]:
    """Sorts by creationTimestamp (RFC 3339 UTC sorts as text), unknown ones last."""
    created = (body or {}).get("metadata", {}).get("creationTimestamp")
    return (str(created) if created else "~", name)


@dataclass(frozen=True)
class Indexes:
    """The indexes one handler call sees, with lookups that return plain values."""

    stores: Mapping[str, Any]
    overrides: Mapping[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Indexes:
        names = (*BY_KIND.values(), GATEWAYS_BY_POLICY, GATEWAYS_BY_QUEUE, STUDENTS_BY_GATEWAY)
        return cls({n: kwargs.get(n, {}) for n in names})

    def _values(self, index: str, key: Key) -> list[Any]:
        store = self.stores[index].get(key)
        return list(store) if store is not None else []

    def with_body(self, body: dict[str, Any]) -> Indexes:
        """These indexes, seeing `body` (e.g. with a status not yet written) instead."""
        meta = body["metadata"]
        key = (str(body["kind"]), str(meta.get("namespace", "default")), str(meta["name"]))
        return Indexes(self.stores, {**self.overrides, key: body})

    def body(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if (kind, namespace, name) in self.overrides:
            return self.overrides[(kind, namespace, name)]
        found = self._values(BY_KIND[kind], (namespace, name))
        return found[0] if found else None

    def gateways_using_policy(self, namespace: str, policy: str) -> list[str]:
        return sorted(set(self._values(GATEWAYS_BY_POLICY, (namespace, policy))))

    def gateways_using_queue(self, namespace: str, queue: str) -> list[str]:
        return sorted(set(self._values(GATEWAYS_BY_QUEUE, (namespace, queue))))

    def queue_holder(self, namespace: str, queue: str) -> str | None:
        """The one gateway a BatchQueue serves: the oldest referencing it (name breaks ties),
        so a gateway created later never takes over a queue in use."""
        users = self.gateways_using_queue(namespace, queue)
        if not users:
            return None
        return min(users, key=lambda n: _age_key(self.body("LLMGateway", namespace, n), n))

    def redis_clash(self, kind: str, namespace: str, name: str) -> str | None:
        """Why `kind`/`name` may not run its managed Redis, or None.

        A CachePolicy with a managed Redis and a BatchQueue of the same name would both run
        `<name>-redis` (one Deployment, Service, PVC and password Secret), flipping its
        eviction policy and owner at every reconcile. The older keeps it (on a tie the
        BatchQueue: its stream must never be evicted); the newer is refused with this message.
        """
        other_kind = "BatchQueue" if kind == "CachePolicy" else "CachePolicy"
        other = self.body(other_kind, namespace, name)
        if other is None:
            return None
        policy = other if other_kind == "CachePolicy" else self.body(kind, namespace, name)
        redis = (policy or {}).get("spec", {}).get("stores", {}).get("redis", {})
        if not redis.get("managed", True):
            return None
        mine = _age_key(self.body(kind, namespace, name), "")[0]
        theirs = _age_key(other, "")[0]
        if mine < theirs or (mine == theirs and kind == "BatchQueue"):
            return None
        return (
            f"{other_kind} {name} in this namespace already runs the managed Redis {name}-redis; "
            f"rename this {kind}"
            + (" or set stores.redis.managed: false" if kind == "CachePolicy" else "")
        )

    def students_of(self, namespace: str, gateway: str) -> list[str]:
        return sorted(set(self._values(STUDENTS_BY_GATEWAY, (namespace, gateway))))
