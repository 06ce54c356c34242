"""CachePolicy -> managed Redis, managed Qdrant and the semantic collection Jobs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from thrifty_core.api import CachePolicy
from thrifty_core.qdrant_layout import PARTITION_FIELD
from thrifty_core.render import (
    collection_name,
    managed_qdrant_url,
    managed_redis_url,
    qdrant_api_key_ref,
    redis_password_ref,
)

from . import names
from .batch import STORE_CLIENTS
from .common import Manifest, Owner, container, metadata, pod_spec, short_hash
from .defaults import Defaults
from .gateway import COMPONENT as GATEWAY_COMPONENT
from .secrets import secret_path, secret_volumes
from .stores import build_qdrant, build_redis, claim_retention, qdrant_claim

COLLECTION_COMPONENT = "thrifty-collection"


@dataclass(frozen=True)
class Collection:
    """The semantic collection a policy needs (None of it when the layer is off)."""

    url: str
    name: str
    size: int
    digest: str


def redis_url(policy: CachePolicy) -> str:
    stores = policy.spec.stores
    if stores.redis.managed:
        return managed_redis_url(policy.metadata.name, policy.metadata.namespace)
    return stores.redis.url or ""


def qdrant_url(policy: CachePolicy) -> str:
    stores = policy.spec.stores
    if stores.qdrant.managed:
        return managed_qdrant_url(policy.metadata.name, policy.metadata.namespace)
    return stores.qdrant.url or ""


def collection(policy: CachePolicy) -> Collection | None:
    semantic = policy.spec.semantic
    if not semantic.enabled or semantic.embedding is None:
        return None
    url = qdrant_url(policy)
    name = collection_name(policy)
    size = semantic.embedding.dimensions
    return Collection(url, name, size, short_hash([url, name, size]))


def keyspace_version(policy: CachePolicy) -> str:
    """Changes when cached entries stop being valid: the sharing scope or the vectors' model.
    Where the embeddings come from (endpoint) and with which key do not change the vectors: a
    key rotation or a proxy must not throw the caches away. (They are blanked rather than left
    out so that a local-backend policy keeps the version it had before they were ignored.)
    The embedding's precision is left out: it changes the vectors only, and the gateway keeps
    each precision's vectors in a semantic keyspace of its own (`runtime.semantic_keyspace`),
    so a switch neither purges the exact layer nor mixes vectors."""
    spec = policy.spec
    embedding = spec.semantic.embedding
    vectors = (
        embedding.model_copy(update={"endpoint": None, "api_key_secret_ref": None})
        if embedding
        else None
    )
    basis = [
        spec.scope,
        vectors.model_dump(mode="json", exclude={"precision"}) if vectors else None,
    ]
    return f"v-{short_hash(basis, 10)}"


# The managed Qdrant image of every operator version before `managed_qdrant_image` existed.
LEGACY_QDRANT_IMAGE = "docker.io/qdrant/qdrant:v1.12.4"
# On the Qdrant's volume claim: the image of the Qdrant that writes it (`claim_ownership`).
QDRANT_IMAGE_ANNOTATION = "thrifty.dev/qdrant-image"


def claim_image(claim: Mapping[str, Any] | None) -> str:
    """The Qdrant image recorded on a volume claim ('' when none is)."""
    annotations = (claim or {}).get("metadata", {}).get("annotations") or {}
    return str(annotations.get(QDRANT_IMAGE_ANNOTATION, ""))


def managed_qdrant_image(
    policy: CachePolicy,
    defaults: Defaults,
    *,
    running: str,
    claim: Mapping[str, Any] | None,
) -> str:
    """The image the policy's managed Qdrant runs now.

    Qdrant's storage moves only one minor version at a time, so an operator upgrade never
    jumps a Qdrant that has data to a new default (`qdrant_upgrade` steps it there, one minor
    version at a time, from this image). In order: the policy's own (`stores.qdrant.image`);
    the one its StatefulSet is `running`; with no StatefulSet, the one recorded on its volume
    `claim` (which lives as long as the data: a layer turned off, a Retain policy deleted and
    made again), else in its status, else the image every earlier operator ran. Only a Qdrant
    without a volume gets the operator's default.
    """
    if policy.spec.stores.qdrant.image:
        return policy.spec.stores.qdrant.image
    if running:
        return running
    recorded = policy.status.qdrant_image if policy.status else ""
    if claim is not None:
        return claim_image(claim) or recorded or LEGACY_QDRANT_IMAGE
    return defaults.qdrant_image


def build_stores(
    policy: CachePolicy, owner: Owner, defaults: Defaults, qdrant_image: str | None = None
) -> list[Manifest]:
    """The managed Redis (exact layer) and Qdrant (semantic layer) the policy asks for. Redis
    admits only gateways and batch workers; Qdrant (every tenant's cached prompts and answers)
    only gateways and the collection Jobs: a worker never uses the semantic layer. The Qdrant
    runs `qdrant_image` (`managed_qdrant_image`; by default that of a new one)."""
    spec = policy.spec
    out: list[Manifest] = []
    password = redis_password_ref(policy)
    if spec.stores.redis.managed and password is not None:
        out += build_redis(
            owner,
            spec.stores.redis,
            defaults,
            evict=True,
            password=password,
            clients=STORE_CLIENTS,
            retain_data=spec.deletion_policy == "Retain",
        )
    if qdrant_runs(policy):
        if qdrant_image is None:
            qdrant_image = managed_qdrant_image(policy, defaults, running="", claim=None)
        out += build_qdrant(
            owner,
            spec.stores.qdrant,
            image=qdrant_image,
            delete_data=spec.deletion_policy == "Delete",
            clients=(GATEWAY_COMPONENT, COLLECTION_COMPONENT),
            api_key=qdrant_api_key_ref(policy),
        )
    return out


def unused_stores(policy: CachePolicy, owner: Owner) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of the managed-store objects the policy no longer runs (its
    Redis turned external; its semantic layer off or its Qdrant external): a store left
    running costs money for nothing. Their volumes and Secrets stay (the data is the user's
    to drop; `deletionPolicy` applies when the policy goes). The Qdrant StatefulSet is not
    among them: it goes only once that does not take its volume claim with it (see
    `claim_ownership`, `claim_held_by`)."""
    spec = policy.spec
    out: list[tuple[str, str, str]] = []
    if not spec.stores.redis.managed:
        # (The Redis volume is a claim of its own, owned by the policy, not by the Deployment.)
        name = names.redis(owner.name)
        out += [("apps/v1", "Deployment", name), *_front(name)]
    if not qdrant_runs(policy):
        out += _front(names.qdrant(owner.name))
    return out


def _front(name: str) -> list[tuple[str, str, str]]:
    return [("v1", "Service", name), ("networking.k8s.io/v1", "NetworkPolicy", name)]


def qdrant_runs(policy: CachePolicy) -> bool:
    """The operator runs a Qdrant for the policy: semantic layer on, Qdrant managed."""
    return policy.spec.semantic.enabled and policy.spec.stores.qdrant.managed


# The field manager of the fields below (the operator's own applies whole objects).
VOLUME_MANAGER = "thrifty-operator-volume-owner"


def has_owner(obj: Mapping[str, Any] | None, uid: str) -> bool:
    refs = (obj or {}).get("metadata", {}).get("ownerReferences") or ()
    return any(ref.get("uid") == uid for ref in refs)


def claim_ownership(
    policy: CachePolicy, owner: Owner, claim: Mapping[str, Any], *, image: str | None = None
) -> Manifest | None:
    """The apply (as `VOLUME_MANAGER`) that makes the Qdrant's volume claim follow the
    policy's deletionPolicy whether or not its StatefulSet still exists, and records on it the
    `image` of the Qdrant that writes it (None: the recorded one stays), or None when it does.

    With Delete the policy is one of the claim's owners (not its controller: the StatefulSet
    controller's own reference, `whenDeleted: Delete`, stays as it is): the claim goes when
    the policy goes, but not with the StatefulSet alone (the garbage collector deletes an
    object only once all its owners are gone), so a semantic layer turned off keeps its data.
    With Retain the policy is not an owner (applied without the reference, which removes it).
    """
    want = policy.spec.deletion_policy == "Delete"
    recorded = claim_image(claim)
    image = image or recorded
    if has_owner(claim, owner.uid) == want and image == recorded:
        return None
    meta: dict[str, Any] = {
        "name": qdrant_claim(owner.name),
        "namespace": owner.namespace,
    }
    if image:  # (every apply carries it: a field this manager leaves out is removed)
        meta["annotations"] = {QDRANT_IMAGE_ANNOTATION: image}
    if want:
        meta["ownerReferences"] = [
            {
                "apiVersion": owner.api_version,
                "kind": owner.kind,
                "name": owner.name,
                "uid": owner.uid,
            }
        ]
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta}


def claim_held_by(
    claim: Mapping[str, Any] | None, statefulset: Mapping[str, Any], owner: Owner
) -> bool:
    """Deleting `statefulset` would delete the claim with it: the StatefulSet owns it
    (`whenDeleted: Delete`) and the policy does not."""
    uid = str(statefulset.get("metadata", {}).get("uid", ""))
    return has_owner(claim, uid) and not has_owner(claim, owner.uid)


def qdrant_release(owner: Owner) -> Manifest:
    """The Qdrant StatefulSet with `whenDeleted: Retain` (applied, as `VOLUME_MANAGER`, over
    one that exists): the StatefulSet controller then takes its owner reference off the
    claim, and the StatefulSet can go without its data."""
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": names.qdrant(owner.name), "namespace": owner.namespace},
        "spec": {"persistentVolumeClaimRetentionPolicy": claim_retention(False)},
    }


def generated_password_needed(policy: CachePolicy) -> bool:
    """A managed Redis without a password Secret of the user's gets a generated one."""
    redis = policy.spec.stores.redis
    return redis.managed and redis.password_secret_ref is None


def generated_qdrant_key_needed(policy: CachePolicy) -> bool:
    """A managed Qdrant (semantic layer on) without an API-key Secret of the user's gets a
    generated key."""
    qdrant = policy.spec.stores.qdrant
    return policy.spec.semantic.enabled and qdrant.managed and qdrant.password_secret_ref is None


def _collection_job(
    policy: CachePolicy, owner: Owner, defaults: Defaults, job_name: str, args: list[str]
) -> Manifest:
    ref = qdrant_api_key_ref(policy)
    volumes, mounts = secret_volumes([ref] if ref else [])
    if ref is not None:
        args = [*args, "--api-key-file", secret_path(ref)]
    main = container("collection", defaults.operator_image, args=args, mounts=mounts)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, job_name, COLLECTION_COMPONENT),
        "spec": {
            "backoffLimit": 10,
            "template": {
                "metadata": {"labels": metadata(owner, "", COLLECTION_COMPONENT)["labels"]},
                "spec": pod_spec([main], volumes=volumes, restart_policy="OnFailure"),
            },
        },
    }


def build_collection_job(policy: CachePolicy, owner: Owner, defaults: Defaults) -> Manifest | None:
    """A Job creating the collection (vector size, cosine, tenant payload index); idempotent."""
    target = collection(policy)
    if target is None:
        return None
    args = [
        "operator",
        "ensure-collection",
        "--url",
        target.url,
        "--collection",
        target.name,
        "--size",
        str(target.size),
        "--tenant-field",
        PARTITION_FIELD,
    ]
    if not policy.spec.stores.qdrant.collection:  # the policy's own collection ...
        # ... unless another namespace's default name coincides: its entries are never dropped.
        args += ["--recreate", "--policy", owner.ident]
    job = _collection_job(policy, owner, defaults, "", args)
    # A Job's pod template is immutable: when it changes (operator image, API key), the Job is a
    # new one rather than a refused update of the finished one.
    digest = short_hash([target.digest, job["spec"]["template"]])
    job["metadata"]["name"] = names.collection_job(owner.name, digest)
    return job


def stale_collection_jobs(policy: CachePolicy, owner: Owner, current: str) -> list[str]:
    """The ensure-collection Jobs that `current` (complete) replaces: the one the status
    records, else the one named by the collection alone (before Jobs were named by their pod
    template). Finished Jobs are kept until then so that `kubectl` shows how it went."""
    target = collection(policy)
    recorded = policy.status.collection_job if policy.status else ""
    legacy = names.collection_job(owner.name, target.digest) if target else ""
    previous = recorded or legacy
    return [previous] if previous and previous != current else []


def build_collection_delete_job(
    policy: CachePolicy, owner: Owner, defaults: Defaults
) -> Manifest | None:
    """A Job dropping the policy's semantic data (run from the finalizer when deletionPolicy is
    Delete): the collection, or only its entries where other policies' entries remain."""
    target = collection(policy)
    if target is None:
        return None
    args = ["operator", "delete-collection", "--url", target.url, "--collection", target.name]
    args += ["--policy", owner.ident]
    return _collection_job(policy, owner, defaults, names.collection_delete_job(owner.name), args)
