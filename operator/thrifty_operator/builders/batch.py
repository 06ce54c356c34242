"""BatchQueue -> its Redis (streams, never evicting), file store PVC and worker Deployment."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from thrifty_core.api import BatchQueue, CachePolicy, LLMGateway, SecretKeyRef
from thrifty_core.api.cachepolicy import RedisStore
from thrifty_core.render import managed_redis_password, redis_password_ref

from . import names
from .common import (
    CONFIG_HASH_ANNOTATION,
    Manifest,
    Owner,
    container,
    metadata,
    pod_spec,
    resources,
    selector_labels,
)
from .defaults import CONFIG_DIR, CONFIG_FILE, Defaults
from .gateway import COMPONENT as GATEWAY_COMPONENT
from .gateway import GatewayMounts, config_volume, shared_volumes
from .stores import build_redis, pvc

WORKER_COMPONENT = "thrifty-batch-worker"
FILES_COMPONENT = "thrifty-batch-files"
# The pods that talk to the managed Redis servers: gateways and batch workers (a worker never
# opens the semantic layer: Qdrant admits gateways alone, see builders.cache).
STORE_CLIENTS = (GATEWAY_COMPONENT, WORKER_COMPONENT)


def worker_secret_refs(
    gateway: LLMGateway, policies: Iterable[CachePolicy], queue: BatchQueue
) -> list[SecretKeyRef]:
    """The Secret keys a batch worker reads: the providers' API keys, the Redis passwords of
    the cache policies (the exact layer it answers lines from and fills; the ledger's Redis)
    and of its queue. Not the tenants' or admin key hashes (it authenticates no one), nor the
    Qdrant or remote-embedding keys (it never opens the semantic layer)."""
    refs: list[SecretKeyRef | None] = [p.api_key_secret_ref for p in gateway.spec.providers]
    refs += [redis_password_ref(policy) for policy in policies]
    refs.append(managed_redis_password(queue.metadata.name))
    return [r for r in refs if r is not None]


def build_queue_stores(queue: BatchQueue, owner: Owner, defaults: Defaults) -> list[Manifest]:
    """Redis for the stream (noeviction, its generated password, gateways and workers only)
    and the file store shared with the gateways."""
    files = queue.spec.file_store
    return [
        *build_redis(
            owner,
            RedisStore(),
            defaults,
            evict=False,
            password=managed_redis_password(owner.name),
            clients=STORE_CLIENTS,
        ),
        pvc(
            owner,
            names.batch_files(owner.name),
            FILES_COMPONENT,
            files.size,
            files.storage_class_name,
            defaults.shared_access_mode,
        ),
    ]


def build_worker(
    queue: BatchQueue,
    owner: Owner,
    gateway: str,
    config_hash: str,
    secret_refs: Sequence[SecretKeyRef],
    defaults: Defaults,
) -> Manifest:
    """The worker runs with the config of the gateway it serves (same providers and keys);
    `secret_refs` are the keys it reads (`worker_secret_refs`)."""
    worker = queue.spec.worker
    volumes, vmounts = shared_volumes(
        GatewayMounts(secret_refs=secret_refs, batch_queue=owner.name)
    )
    volumes.insert(0, config_volume(gateway))
    vmounts.insert(0, {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
    main = container(
        "worker",
        worker.image or defaults.gateway_image,
        args=["batch-worker", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        mounts=vmounts,
        resources_block=resources(worker.resources.requests, worker.resources.limits),
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, names.batch_worker(owner.name), WORKER_COMPONENT),
        "spec": {
            "replicas": worker.replicas,
            "selector": {"matchLabels": selector_labels(owner, WORKER_COMPONENT)},
            "template": {
                "metadata": {
                    "labels": metadata(owner, "", WORKER_COMPONENT)["labels"],
                    "annotations": {
                        CONFIG_HASH_ANNOTATION: config_hash,
                        "thrifty.dev/gateway": gateway,
                    },
                },
                "spec": pod_spec([main], volumes=volumes),
            },
        },
    }
