"""BatchQueue: its Redis and file store; the worker runs with the config of the one gateway
it serves (the oldest referencing it)."""

from __future__ import annotations

from typing import Any

from thrifty_core.api import BatchQueue

from ..builders import names
from ..builders.batch import build_queue_stores
from ..builders.common import Owner
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
    ensure_redis_password,
    parse,
    plain,
    rollout_reason,
)
from .indexes import Indexes


async def reconcile(body: Body, ix: Indexes, ctx: Context) -> Outcome:
    queue = parse(BatchQueue, body)
    owner = Owner.from_body(body)
    ns = owner.namespace
    clash = ix.redis_clash("BatchQueue", ns, owner.name)
    if clash:
        raise InvalidSpec(clash)
    await ensure_redis_password(ctx.kube, owner)
    await apply_all(ctx.kube, build_queue_stores(queue, owner, ctx.defaults))
    redis_ok, message = deployment_state(
        await ctx.kube.get("apps/v1", "Deployment", ns, names.redis(owner.name))
    )
    conds: list[Cond] = [
        true("StoreReady", "StoresAvailable", f"redis: {message}")
        if redis_ok
        else false("StoreReady", "StoresProgressing", f"redis: {message}")
    ]
    fields: dict[str, Any] = {
        "stream": names.batch_stream(owner.name, ns),
        "workerReplicas": 0,
        "gateway": "",
    }
    users = ix.gateways_using_queue(ns, owner.name)
    holder = ix.queue_holder(ns, owner.name)
    if holder is None:
        # Its worker ran with the config of a gateway that is gone (that ConfigMap goes with
        # it: a restarted worker pod could not start, a running one keeps its old providers and
        # keys). The lines wait in Redis; the next gateway to reference the queue starts one.
        await delete_owned(ctx.kube, owner, "apps/v1", "Deployment", names.batch_worker(owner.name))
        conds.append(
            false(
                "Available",
                "NoGateway",
                "no LLMGateway references this queue (batchQueueRef); its lines wait, no "
                "worker runs",
            )
        )
        return Outcome(conds, fields)
    fields["gateway"] = holder
    # The worker mounts its gateway's config: re-render the gateways (the holder applies the
    # worker; the others learn that they are refused).
    await gateway.resync(ix, ctx, ns, users)
    worker = await ctx.kube.get("apps/v1", "Deployment", ns, names.batch_worker(owner.name))
    ok, message = deployment_state(worker)
    fields["workerReplicas"] = int((worker or {}).get("status", {}).get("readyReplicas", 0))
    refused = [u for u in users if u != holder]
    serves = f"serves gateway {holder}" + (
        f"; refused (BatchQueueInUse): {', '.join(refused)}" if refused else ""
    )
    conds.append(
        true("Available", "WorkersAvailable", f"{message}; {serves}")
        if ok
        else false(
            "Available", rollout_reason(worker, "WorkersProgressing"), f"{message}; {serves}"
        )
    )
    return Outcome(conds, fields)


async def dependents(body: Body, status: dict[str, Any], ix: Indexes, ctx: Context) -> None:
    """Re-render the gateway that uses this queue (seeing its new status), as
    `cachepolicy.dependents` does for a policy's gateways."""
    current = plain(body)
    current["status"] = {**(current.get("status") or {}), **status}
    ns, name = current["metadata"].get("namespace", "default"), current["metadata"]["name"]
    await gateway.resync(ix.with_body(current), ctx, ns, ix.gateways_using_queue(ns, name))
