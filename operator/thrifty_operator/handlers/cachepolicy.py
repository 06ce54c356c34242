"""CachePolicy: managed stores, the semantic collection (via Jobs), and dependent gateways."""

from __future__ import annotations

from typing import Any, cast

import kopf

from thrifty_core.api import CachePolicy

from ..builders import cache, names
from ..builders.common import Owner
from ..conditions import Cond, false, true
from . import gateway
from .common import (
    Body,
    Context,
    InvalidSpec,
    Outcome,
    apply_all,
    deployment_state,
    job_state,
    parse,
    plain,
    statefulset_state,
)
from .indexes import Indexes


async def _store_state(policy: CachePolicy, owner: Owner, ctx: Context) -> tuple[bool, bool, str]:
    """(redis ok, qdrant ok, message) for the managed stores (external ones count as ok)."""
    ns, stores = owner.namespace, policy.spec.stores
    redis_ok, qdrant_ok, parts = True, True, []
    if stores.redis.managed:
        obj = await ctx.kube.get("apps/v1", "Deployment", ns, names.redis(owner.name))
        redis_ok, msg = deployment_state(obj)
        parts.append(f"redis: {msg}")
    if policy.spec.semantic.enabled and stores.qdrant.managed:
        obj = await ctx.kube.get("apps/v1", "StatefulSet", ns, names.qdrant(owner.name))
        qdrant_ok, msg = statefulset_state(obj)
        parts.append(f"qdrant: {msg}")
    return redis_ok, qdrant_ok, "; ".join(parts) or "external stores"


async def reconcile(body: Body, ctx: Context) -> Outcome:
    policy = parse(CachePolicy, body)
    owner = Owner.from_body(body)
    await apply_all(ctx.kube, cache.build_stores(policy, owner, ctx.defaults))
    redis_ok, qdrant_ok, message = await _store_state(policy, owner, ctx)
    conds: list[Cond] = [
        true("StoreReady", "StoresAvailable", message)
        if redis_ok and qdrant_ok
        else false("StoreReady", "StoresProgressing", message)
    ]
    target = cache.collection(policy)
    if target is None:
        conds.append(true("CollectionReady", "NotNeeded", "the semantic layer is off"))
    elif not qdrant_ok:
        conds.append(false("CollectionReady", "WaitingForStore", "Qdrant is not ready yet"))
    else:
        job = cache.build_collection_job(policy, owner, ctx.defaults)
        assert job is not None
        await ctx.kube.apply(job)
        state = job_state(
            await ctx.kube.get("batch/v1", "Job", owner.namespace, job["metadata"]["name"])
        )
        detail = f"collection {target.name} (size {target.size}, tenant index)"
        conds.append(
            true("CollectionReady", "Created", detail)
            if state == "Complete"
            else false(
                "CollectionReady", "CollectionFailed" if state == "Failed" else "Creating", detail
            )
        )
    fields: dict[str, Any] = {
        "collection": target.name if target else "",
        "redisUrl": cache.redis_url(policy),
        "qdrantUrl": cache.qdrant_url(policy) if target else "",
        "keyspaceVersion": cache.keyspace_version(policy),
    }
    return Outcome(conds, fields)


async def dependents(body: Body, status: dict[str, Any], ix: Indexes, ctx: Context) -> None:
    """Re-render the gateways that use this policy (seeing its new status)."""
    current = plain(body)
    current["status"] = {**(current.get("status") or {}), **status}
    ns, name = current["metadata"].get("namespace", "default"), current["metadata"]["name"]
    await gateway.resync(ix.with_body(current), ctx, ns, ix.gateways_using_policy(ns, name))


async def delete_collection(body: Body, ctx: Context) -> None:
    """Finalizer step for deletionPolicy Delete: run the delete Job and wait for it."""
    try:
        policy = parse(CachePolicy, body)
    except InvalidSpec:
        return
    owner = Owner.from_body(body)
    job = cache.build_collection_delete_job(policy, owner, ctx.defaults)
    if job is None:
        return
    await ctx.kube.apply(job)
    obj = await ctx.kube.get("batch/v1", "Job", owner.namespace, job["metadata"]["name"])
    state = job_state(obj)
    if state == "Complete":
        return
    if state == "Failed":
        kopf.warn(
            cast(kopf.Body, body),
            reason="CollectionNotDeleted",
            message="the collection delete Job failed; the data was left in place",
        )
        return
    raise kopf.TemporaryError("waiting for the collection to be deleted", delay=5)
