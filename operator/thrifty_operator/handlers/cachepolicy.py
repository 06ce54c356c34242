"""CachePolicy: managed stores, the semantic collection (via Jobs), and dependent gateways."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import kopf

from thrifty_core.api import CachePolicy

from ..apply import KubeError
from ..builders import cache, names, qdrant_upgrade
from ..builders.common import Owner
from ..builders.stores import qdrant_claim
from ..conditions import Cond, false, true
from . import gateway
from .common import (
    Body,
    Context,
    InvalidSpec,
    Outcome,
    apply_all,
    delete_owned,
    deployment_state,
    ensure_qdrant_key,
    ensure_redis_password,
    job_state,
    now,
    owned_by,
    parse,
    plain,
    rollout_stuck,
    statefulset_pod_problem,
    statefulset_state,
)
from .indexes import Indexes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreState:
    """The managed stores' state (external ones count as ok)."""

    redis_ok: bool
    qdrant_ok: bool
    message: str
    stuck: bool  # a store's pod waits for a change (`pod_problem`)


async def _store_state(policy: CachePolicy, owner: Owner, ctx: Context) -> StoreState:
    ns, stores = owner.namespace, policy.spec.stores
    redis_ok, qdrant_ok, parts, stuck = True, True, [], False
    if stores.redis.managed:
        obj = await ctx.kube.get("apps/v1", "Deployment", ns, names.redis(owner.name))
        redis_ok, msg = deployment_state(obj)
        stuck = not redis_ok and rollout_stuck(obj)
        parts.append(f"redis: {msg}")
    if policy.spec.semantic.enabled and stores.qdrant.managed:
        name = names.qdrant(owner.name)
        obj = await ctx.kube.get("apps/v1", "StatefulSet", ns, name)
        qdrant_ok, msg = statefulset_state(obj)
        if not qdrant_ok and obj is not None:
            # A StatefulSet says nothing of a pod that cannot start (an upgrade step's image
            # missing from a mirror, a crash loop): its pod does.
            problem = await statefulset_pod_problem(ctx.kube, ns, name)
            if problem:
                msg, stuck = f"{msg}; {problem}", True
        parts.append(f"qdrant: {msg}")
    return StoreState(redis_ok, qdrant_ok, "; ".join(parts) or "external stores", stuck)


async def _qdrant_volume(policy: CachePolicy, owner: Owner, ctx: Context, image: str | None) -> str:
    """Keep the managed Qdrant's volume claim owned as deletionPolicy says and recording the
    `image` of its Qdrant (None: none runs, the recorded one stays), and delete the
    StatefulSet of a Qdrant the policy no longer runs once that does not take the claim with
    it (the semantic data stays until the policy goes). Returns what it waits for, or ''."""
    ns = owner.namespace
    claim = await ctx.kube.get("v1", "PersistentVolumeClaim", ns, qdrant_claim(owner.name))
    if claim is not None:
        change = cache.claim_ownership(policy, owner, claim, image=image)
        if change is not None:
            claim = await ctx.kube.apply(change, field_manager=cache.VOLUME_MANAGER)
    if cache.qdrant_runs(policy):
        return ""
    name = names.qdrant(owner.name)
    statefulset = await ctx.kube.get("apps/v1", "StatefulSet", ns, name)
    if statefulset is None or not owned_by(statefulset, owner):
        return ""
    if cache.claim_held_by(claim, statefulset, owner):
        # (deletionPolicy changed to Retain as the layer went off: the live StatefulSet still
        # says whenDeleted: Delete.)
        await ctx.kube.apply(cache.qdrant_release(owner), field_manager=cache.VOLUME_MANAGER)
        return f"qdrant: {name} is removed once the StatefulSet controller releases its volume"
    await ctx.kube.delete("apps/v1", "StatefulSet", ns, name)
    return ""


async def _qdrant_image(policy: CachePolicy, owner: Owner, ctx: Context) -> tuple[str | None, str]:
    """The image the managed Qdrant runs (`cache.managed_qdrant_image`), or the next step of
    its upgrade (`qdrant_upgrade`), recorded on its volume claim before it is applied; None
    when there is none to run. With it, the image its StatefulSet ran ('' without one)."""
    if not cache.qdrant_runs(policy):
        return None, ""
    ns = owner.namespace
    statefulset = await ctx.kube.get("apps/v1", "StatefulSet", ns, names.qdrant(owner.name))
    running = ""
    if statefulset is not None and owned_by(statefulset, owner):
        containers = statefulset["spec"]["template"]["spec"]["containers"]
        running = next((str(c["image"]) for c in containers if c["name"] == "qdrant"), "")
    claim = await ctx.kube.get("v1", "PersistentVolumeClaim", ns, qdrant_claim(owner.name))
    image = cache.managed_qdrant_image(policy, ctx.defaults, running=running, claim=claim)
    step = qdrant_upgrade.qdrant_upgrade_step(
        policy,
        ctx.defaults,
        running=running,
        rolled_out=bool(running) and statefulset_state(statefulset)[0],
        recorded=cache.claim_image(claim),
    )
    if step is not None and claim is not None:
        change = cache.claim_ownership(policy, owner, claim, image=step)
        if change is not None:
            await ctx.kube.apply(change, field_manager=cache.VOLUME_MANAGER)
        logger.info("cachepolicy %s/%s: Qdrant %s -> %s", ns, owner.name, image, step)
        image = step
    return image, running


async def reconcile(body: Body, ix: Indexes, ctx: Context) -> Outcome:
    policy = parse(CachePolicy, body)
    owner = Owner.from_body(body)
    if policy.spec.stores.redis.managed:
        clash = ix.redis_clash("CachePolicy", owner.namespace, owner.name)
        if clash:
            raise InvalidSpec(clash)
    if cache.generated_password_needed(policy):
        await ensure_redis_password(ctx.kube, owner)
    if cache.generated_qdrant_key_needed(policy):
        await ensure_qdrant_key(ctx.kube, owner)
    qdrant_image, ran = await _qdrant_image(policy, owner, ctx)
    await apply_all(ctx.kube, cache.build_stores(policy, owner, ctx.defaults, qdrant_image))
    for api_version, kind, name in cache.unused_stores(policy, owner):
        await delete_owned(ctx.kube, owner, api_version, kind, name)
    waiting = await _qdrant_volume(policy, owner, ctx, qdrant_image)
    stores = await _store_state(policy, owner, ctx)
    redis_ok, message = stores.redis_ok, stores.message
    pending = qdrant_upgrade.upgrade_pending(policy, ctx.defaults, qdrant_image or "")
    qdrant_ok = stores.qdrant_ok and not pending
    # A step the StatefulSet already rolled out in this pass (kwok's pods are ready at once)
    # is done: the message is of the Qdrant that runs, not of the step.
    ran = (qdrant_image or "") if qdrant_ok else ran
    upgrade = qdrant_upgrade.upgrade_message(policy, ctx.defaults, qdrant_image or "", ran)
    for note in (waiting, upgrade):
        if note:
            message = f"{message}; {note}" if message != "external stores" else note
    conds: list[Cond] = [
        true("StoreReady", "StoresAvailable", message)
        if redis_ok and qdrant_ok and not waiting
        else false("StoreReady", "StoresFailing" if stores.stuck else "StoresProgressing", message)
    ]
    target = cache.collection(policy)
    collection_job = policy.status.collection_job if policy.status else ""
    if target is None:
        conds.append(true("CollectionReady", "NotNeeded", "the semantic layer is off"))
    elif not qdrant_ok:
        conds.append(false("CollectionReady", "WaitingForStore", "Qdrant is not ready yet"))
    else:
        job = cache.build_collection_job(policy, owner, ctx.defaults)
        assert job is not None
        name = job["metadata"]["name"]
        await ctx.kube.apply(job)
        state = job_state(await ctx.kube.get("batch/v1", "Job", owner.namespace, name))
        if state == "Complete":
            for stale in cache.stale_collection_jobs(policy, owner, name):
                await ctx.kube.delete("batch/v1", "Job", owner.namespace, stale)
            collection_job = name
        detail = f"collection {target.name} (size {target.size}, tenant index)"
        conds.append(
            true("CollectionReady", "Created", detail)
            if state == "Complete"
            else false(
                "CollectionReady", "CollectionFailed", f"{detail}: see kubectl logs job/{name}"
            )
            if state == "Failed"
            else false("CollectionReady", "Creating", detail)
        )
    fields: dict[str, Any] = {
        "collection": target.name if target else "",
        "collectionJob": collection_job,
        "redisUrl": cache.redis_url(policy),
        "qdrantUrl": cache.qdrant_url(policy) if target else "",
        "keyspaceVersion": cache.keyspace_version(policy),
        # Kept while the layer is off: the volume (and its storage version) stays.
        "qdrantImage": qdrant_image or (policy.status.qdrant_image if policy.status else ""),
    }
    return Outcome(conds, fields)


async def dependents(body: Body, status: dict[str, Any], ix: Indexes, ctx: Context) -> None:
    """Re-render the gateways that use this policy (seeing its new status)."""
    current = plain(body)
    current["status"] = {**(current.get("status") or {}), **status}
    ns, name = current["metadata"].get("namespace", "default"), current["metadata"]["name"]
    await gateway.resync(ix.with_body(current), ctx, ns, ix.gateways_using_policy(ns, name))


@dataclass(frozen=True)
class FinalizerStep:
    """What the collection finalizer does next: wait (retry soon) or release the policy, with
    a Warning (reason, message) when the collection may be left behind."""

    release: bool
    reason: str = ""
    message: str = ""


def deleted_at(body: Body) -> datetime | None:
    """The policy's metadata.deletionTimestamp (None when it is not being deleted)."""
    return _timestamp(body.get("metadata", {}).get("deletionTimestamp"))


def created_at(obj: Mapping[str, Any] | None) -> datetime | None:
    """An object's metadata.creationTimestamp (None without one)."""
    return _timestamp((obj or {}).get("metadata", {}).get("creationTimestamp"))


def _timestamp(raw: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(raw)) if raw else None
    except ValueError:
        return None


def collection_delete_step(
    collection: str,
    state: str | None,
    error: KubeError | None,
    since: datetime | None,
    now: datetime,
    timeout_s: float,
) -> FinalizerStep:
    """Decide the finalizer's next step from the delete Job's state or the API error.

    A refusal that retrying cannot fix (403, e.g. the namespace is being terminated; 404; 422)
    releases at once; a Job that neither completes nor fails (e.g. stuck Pending) or a transient
    API fault is waited for until `timeout_s` after the Job was made (else after the deletion),
    then released. Either way the policy never blocks its namespace's deletion forever.
    """
    if error is not None and (error.permanent or error.status == 404):
        return FinalizerStep(
            True,
            "CollectionDeleteRefused",
            f"the API server refused the delete Job ({error.status}: {error.message}); "
            f"the collection {collection} may remain",
        )
    if error is None and state == "Complete":
        return FinalizerStep(True)
    if error is None and state == "Failed":
        return FinalizerStep(
            True,
            "CollectionNotDeleted",
            f"the collection delete Job failed; the collection {collection} was left in place",
        )
    if since is not None and (now - since).total_seconds() >= timeout_s:
        return FinalizerStep(
            True,
            "CollectionDeleteTimedOut",
            f"the collection delete Job did not finish within {timeout_s:.0f}s of the deletion; "
            f"giving up, the collection {collection} may remain",
        )
    why = f"API error {error.status}" if error is not None else f"Job {state}"
    return FinalizerStep(False, "", f"waiting for the collection to be deleted ({why})")


async def delete_collection(body: Body, ctx: Context) -> None:
    """Finalizer step for deletionPolicy Delete: run the delete Job and wait for it, within a
    deadline; a refused or stuck Job lets the policy go with a Warning Event."""
    try:
        policy = parse(CachePolicy, body)
    except InvalidSpec as exc:
        # Which collection and Qdrant it named cannot be trusted: released, and said so.
        meta = body.get("metadata", {})
        qdrant: Any = body.get("spec")
        for key in ("stores", "qdrant"):
            qdrant = qdrant.get(key) if isinstance(qdrant, Mapping) else None
        named = qdrant.get("collection") if isinstance(qdrant, Mapping) else None
        guess = named or f"thrifty-{meta.get('namespace')}-{meta.get('name')}"
        message = (
            f"deletionPolicy Delete, but the spec does not validate ({exc}): its semantic "
            f"collection (likely {guess}) was not deleted and may remain; drop it yourself"
        )
        logger.warning("cachepolicy %s released: %s", meta.get("name"), message)
        kopf.warn(cast(kopf.Body, body), reason="CollectionNotDeleted", message=message)
        return
    owner = Owner.from_body(body)
    job = cache.build_collection_delete_job(policy, owner, ctx.defaults)
    target = cache.collection(policy)
    if job is None or target is None:
        return
    state: str | None = None
    error: KubeError | None = None
    # The deadline counts from when the Job was made, not from the deletion: an operator that
    # comes back long after (it was down, the README says to reinstall it) must still give its
    # Job the time to run, rather than let go of the policy at once with the data in place.
    since = deleted_at(body)
    try:
        # A Job already there is followed as it is, not applied again: its pod template is
        # immutable, and one made by an earlier operator version may differ.
        found = await ctx.kube.get("batch/v1", "Job", owner.namespace, job["metadata"]["name"])
        running = found if found is not None else await ctx.kube.apply(job)
        state = job_state(running)
        since = max(filter(None, (since, created_at(running))), default=since)
    except KubeError as exc:
        error = exc
    step = collection_delete_step(
        target.name,
        state,
        error,
        since,
        now(),
        ctx.settings.collection_delete_timeout_seconds,
    )
    if not step.release:
        raise kopf.TemporaryError(step.message, delay=5)
    if step.reason:
        logger.warning("cachepolicy %s/%s released: %s", owner.namespace, owner.name, step.message)
        kopf.warn(cast(kopf.Body, body), reason=step.reason, message=step.message)
