"""Managed stores: Redis (exact cache, batch queue) and Qdrant (semantic vectors)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from thrifty_core.api import SecretKeyRef
from thrifty_core.api.cachepolicy import QdrantStore, RedisStore
from thrifty_core.render import (
    MANAGED_QDRANT_KEY,
    MANAGED_REDIS_PASSWORD_KEY,
    managed_qdrant_secret,
    managed_redis_secret,
)
from thrifty_core.running_cost import parse_quantity

from . import names
from .common import (
    Manifest,
    Owner,
    container,
    metadata,
    pod_spec,
    resources,
    selector_labels,
)
from .defaults import QDRANT_GRPC_PORT, QDRANT_HTTP_PORT, REDIS_PORT, Defaults

REDIS_COMPONENT = "thrifty-redis"
QDRANT_COMPONENT = "thrifty-qdrant"


def _secret_env(name: str, ref: Any) -> list[dict[str, Any]]:
    if ref is None:
        return []
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def _pvc_spec(size: str, storage_class: str | None, mode: str = "ReadWriteOnce") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": [mode],
        "resources": {"requests": {"storage": size}},
    }
    if storage_class:
        spec["storageClassName"] = storage_class
    return spec


CACHE_MAXMEMORY = 1024**3  # bytes of a cache Redis that has no memory limit
MAXMEMORY_SHARE = 0.75  # of the memory limit: headroom for the AOF rewrite's fork and buffers


def redis_maxmemory(store: RedisStore, *, evict: bool) -> int:
    """Redis's `maxmemory` in bytes (0: none). Without it Redis never evicts, whatever the
    policy says: a cache grows until the pod is OOM-killed. Three quarters of the container's
    memory limit when it has one (a full queue, `noeviction`, then refuses writes instead of
    being killed); else 1 GiB for a cache and none for a queue."""
    memory = store.resources.limits.get("memory")
    if memory:
        return int(parse_quantity(memory) * MAXMEMORY_SHARE)
    return CACHE_MAXMEMORY if evict else 0


def build_redis(
    owner: Owner,
    store: RedisStore,
    defaults: Defaults,
    *,
    evict: bool,
    password: SecretKeyRef,
    clients: Sequence[str],
    retain_data: bool = False,
) -> list[Manifest]:
    """PVC + single-replica Deployment (Recreate: one writer) + Service for a managed Redis,
    which requires `password` and admits only the `clients` components (a NetworkPolicy).

    `evict` picks volatile-lru (a cache) or noeviction (a queue must never lose entries).
    `retain_data`: the PVC has no owner reference, so deleting the owner leaves it (a cache
    policy's Redis also holds the usage ledger, budget spend and rate limits); a new owner of
    the same name finds it again.
    """
    name = names.redis(owner.name)
    data = f"{name}-data"
    limit = redis_maxmemory(store, evict=evict)
    args = [
        "--port",
        str(REDIS_PORT),
        "--dir",
        "/data",
        "--appendonly",
        "yes",
        *(["--maxmemory", str(limit)] if limit else []),
        "--maxmemory-policy",
        # Only keys with a TTL are evicted: cached answers. The ledger, budget spend and rate
        # limits have none and are cleaned up by Thrifty, so memory pressure never drops usage
        # figures or resets spend.
        "volatile-lru" if evict else "noeviction",
        "--protected-mode",
        "no",
        "--requirepass",
        "$(REDIS_PASSWORD)",
    ]
    main = container(
        "redis",
        store.image or defaults.redis_image,
        command=["redis-server"],
        args=args,
        ports=[{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
        env=_secret_env("REDIS_PASSWORD", password),
        mounts=[{"name": "data", "mountPath": "/data"}],
        resources_block=resources(store.resources.requests, store.resources.limits),
        probes={
            "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10},
            "readinessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 5},
        },
    )
    pvc_meta = metadata(owner, data, REDIS_COMPONENT)
    if retain_data:
        del pvc_meta["ownerReferences"]
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": pvc_meta,
        "spec": _pvc_spec(store.storage, store.storage_class_name),
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, name, REDIS_COMPONENT),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector_labels(owner, REDIS_COMPONENT)},
            "template": {
                "metadata": {"labels": metadata(owner, "", REDIS_COMPONENT)["labels"]},
                "spec": pod_spec(
                    [main],
                    volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": data}}],
                ),
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, name, REDIS_COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner, REDIS_COMPONENT),
            "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis"}],
        },
    }
    ingress = build_network_policy(owner, name, REDIS_COMPONENT, [REDIS_PORT], clients)
    return [pvc, deployment, service, ingress]


def _auth_secret(owner: Owner, name: str, component: str, key: str, value: str) -> Manifest:
    """A generated credential of a managed store, owned by the resource (created once, never
    replaced: the caller makes the value; builders stay free of randomness)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(owner, name, component),
        "type": "Opaque",
        "stringData": {key: value},
    }


def build_redis_auth_secret(owner: Owner, password: str) -> Manifest:
    """The generated password of a managed Redis."""
    secret = managed_redis_secret(owner.name)
    return _auth_secret(owner, secret, REDIS_COMPONENT, MANAGED_REDIS_PASSWORD_KEY, password)


def build_qdrant_auth_secret(owner: Owner, api_key: str) -> Manifest:
    """The generated API key of a managed Qdrant."""
    secret = managed_qdrant_secret(owner.name)
    return _auth_secret(owner, secret, QDRANT_COMPONENT, MANAGED_QDRANT_KEY, api_key)


def build_network_policy(
    owner: Owner, name: str, component: str, ports: Sequence[int], clients: Sequence[str]
) -> Manifest:
    """Ingress to a store's pods only from the pods of the `clients` components (by their
    app.kubernetes.io/name label, same namespace) and only on its ports."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(owner, name, component),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner, component)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": client}}}
                        for client in sorted(set(clients))
                    ],
                    "ports": [{"protocol": "TCP", "port": port} for port in ports],
                }
            ],
        },
    }


QDRANT_VOLUME = "storage"  # the volumeClaimTemplate of the Qdrant StatefulSet


def qdrant_claim(owner: str) -> str:
    """The claim the StatefulSet controller made for the (one) Qdrant pod of `owner`."""
    return f"{QDRANT_VOLUME}-{names.qdrant(owner)}-0"


def claim_retention(delete_data: bool) -> dict[str, str]:
    """The Qdrant StatefulSet's `persistentVolumeClaimRetentionPolicy`: its volume goes with
    the StatefulSet only for deletionPolicy Delete (the StatefulSet controller then makes the
    StatefulSet an owner of the claim, and the garbage collector deletes it with it), never
    when it is scaled down."""
    return {"whenDeleted": "Delete" if delete_data else "Retain", "whenScaled": "Retain"}


def build_qdrant(
    owner: Owner,
    store: QdrantStore,
    *,
    image: str,
    delete_data: bool,
    clients: Sequence[str],
    api_key: SecretKeyRef | None,
) -> list[Manifest]:
    """Headless Service + StatefulSet (one PVC per pod) running `image`, for a managed Qdrant
    that requires `api_key` on every call (except its health probes), admitting only the
    `clients` components (a NetworkPolicy).

    The PVC follows the policy's deletionPolicy: Delete removes it with the StatefulSet.
    """
    name = names.qdrant(owner.name)
    main = container(
        "qdrant",
        image,
        ports=[
            {"name": "http", "containerPort": QDRANT_HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": QDRANT_GRPC_PORT, "protocol": "TCP"},
        ],
        env=[
            {"name": "QDRANT__STORAGE__STORAGE_PATH", "value": "/qdrant/storage"},
            {"name": "QDRANT__STORAGE__SNAPSHOTS_PATH", "value": "/qdrant/snapshots"},
            {"name": "QDRANT__TELEMETRY_DISABLED", "value": "true"},
            *_secret_env("QDRANT__SERVICE__API_KEY", api_key),
        ],
        mounts=[
            {"name": QDRANT_VOLUME, "mountPath": "/qdrant/storage"},
            {"name": "snapshots", "mountPath": "/qdrant/snapshots"},
        ],
        resources_block=resources(store.resources.requests, store.resources.limits),
        probes={
            "livenessProbe": {"httpGet": {"path": "/livez", "port": "http"}, "periodSeconds": 10},
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        },
    )
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(owner, name, QDRANT_COMPONENT),
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector_labels(owner, QDRANT_COMPONENT)},
            "persistentVolumeClaimRetentionPolicy": claim_retention(delete_data),
            "template": {
                "metadata": {"labels": metadata(owner, "", QDRANT_COMPONENT)["labels"]},
                "spec": pod_spec(
                    [main], volumes=[{"name": "snapshots", "emptyDir": {"sizeLimit": "1Gi"}}]
                ),
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": QDRANT_VOLUME},
                    "spec": _pvc_spec(store.storage, store.storage_class_name),
                }
            ],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, name, QDRANT_COMPONENT),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": False,
            "selector": selector_labels(owner, QDRANT_COMPONENT),
            "ports": [
                {"name": "http", "port": QDRANT_HTTP_PORT, "targetPort": "http"},
                {"name": "grpc", "port": QDRANT_GRPC_PORT, "targetPort": "grpc"},
            ],
        },
    }
    ports = [QDRANT_HTTP_PORT, QDRANT_GRPC_PORT]
    ingress = build_network_policy(owner, name, QDRANT_COMPONENT, ports, clients)
    return [service, statefulset, ingress]


def pvc(
    owner: Owner,
    name: str,
    component: str,
    size: str,
    storage_class: str | None,
    mode: str = "ReadWriteMany",
) -> Manifest:
    """A claim shared by several pods (batch files, distillation artifacts)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(owner, name, component),
        "spec": _pvc_spec(size, storage_class, mode),
    }
