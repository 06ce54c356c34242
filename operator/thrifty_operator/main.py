"""Registration only: wire the handlers, indexes, timers and probes into a kopf registry.

`thrifty operator` builds a registry with `build_registry(settings)` and runs it; nothing is
registered or configured at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from thrifty_core.api import GROUP, RESOURCES, VERSION

from .apply import KubeClient, connect
from .handlers import batchqueue, cachepolicy, distilledmodel, gateway
from .handlers import indexes as ix
from .handlers.common import Body, Context, Outcome, context, plain, run
from .release import release_unwatched, stamp
from .settings import OperatorSettings, configure_kopf

logger = logging.getLogger(__name__)

# In each object's memo: its reconcile passes (change handlers and timers) run one at a time.
RECONCILE_LOCK = "reconcile_lock"


async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Operator settings in one place; the API client every handler uses (via the memo)."""
    configure_kopf(settings, namespaced=bool(memo.get("namespaced")))
    ours = memo.get("settings")
    if not isinstance(ours, OperatorSettings):
        ours = OperatorSettings()
    api = await connect()
    memo["api"] = api
    ctx = Context(KubeClient(api, ours.field_manager), ours.defaults(), ours)
    memo["ctx"] = ctx
    logger.info("thrifty operator started (drift check every %ss)", ours.drift_interval_seconds)
    watched = list(memo.get("namespaces") or [])
    if watched and ours.instance:
        # In the background: kopf serves the liveness probe only once startup returns, and a
        # busy API server may take a while to answer cluster-wide lists.
        memo["release"] = asyncio.create_task(_release(ctx, watched))


async def _release(ctx: Context, watched: list[str]) -> None:
    try:
        await release_unwatched(ctx.kube, ctx.settings.instance, watched)
    except Exception:  # never stops the operator; tried again at its next start
        logger.exception("releasing resources of namespaces no longer watched failed")


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own credentials: the pod's service account, else KUBECONFIG."""
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
    return info or kopf.login_with_kubeconfig(**kwargs)


async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    ctx = memo.get("ctx")
    if isinstance(ctx, Context):
        ctx.stopping.set()  # (reconciles kopf left running fail on the closed client below)
    release = memo.get("release")
    if isinstance(release, asyncio.Task):
        release.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await release
    api = memo.get("api")
    if api is not None:
        await api.close()


def probe_context(memo: kopf.Memo, **_: Any) -> bool:
    """Liveness: the operator initialised its clients."""
    return isinstance(memo.get("ctx"), Context)


async def _gateway(body: Body, patch: Any, indexes: ix.Indexes, ctx: Context, strict: bool) -> None:
    await _reconcile(body, patch, ctx, strict, lambda: gateway.sync(plain(body), indexes, ctx))


async def _cachepolicy(
    body: Body, patch: Any, indexes: ix.Indexes, ctx: Context, strict: bool
) -> None:
    await _reconcile(body, patch, ctx, strict, lambda: cachepolicy.reconcile(body, indexes, ctx))
    if not ctx.stopping.is_set():  # (the client closes under it)
        await cachepolicy.dependents(body, dict(patch.status), indexes, ctx)


async def _batchqueue(
    body: Body, patch: Any, indexes: ix.Indexes, ctx: Context, strict: bool
) -> None:
    await _reconcile(body, patch, ctx, strict, lambda: batchqueue.reconcile(body, indexes, ctx))


async def _distilledmodel(
    body: Body, patch: Any, indexes: ix.Indexes, ctx: Context, strict: bool
) -> None:
    await _reconcile(body, patch, ctx, strict, lambda: distilledmodel.reconcile(body, indexes, ctx))
    if not ctx.stopping.is_set():  # (the client closes under it)
        await distilledmodel.dependents(body, dict(patch.status), indexes, ctx)


async def _reconcile(
    body: Body,
    patch: Any,
    ctx: Context,
    strict: bool,
    reconcile: Callable[[], Awaitable[Outcome]],
) -> None:
    await run(body, patch, reconcile, strict=strict, stopping=ctx.stopping)


def not_ready(status: kopf.Status, **_: Any) -> bool:
    """Filter of the progress timer: runs until the resource reports Ready=True, and not for a
    spec that cannot work (only an edit or the slow drift check looks at it again)."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") != "True" and cond.get("reason") != "InvalidSpec")
    return True


def _register_reconcile(
    registry: kopf.OperatorRegistry,
    plural: str,
    fn: Callable[[Body, Any, ix.Indexes, Context, bool], Awaitable[None]],
    settings: OperatorSettings,
) -> None:
    """One level-based reconcile on create/update/resume, and the same as timers: a drift
    check at a slow interval, and a faster one only while the resource is not Ready (so status
    follows children that become available without waiting for the drift check)."""
    interval = settings.drift_interval_seconds

    async def reconcile(
        body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, kw: dict[str, Any], strict: bool
    ) -> None:
        ctx = context(memo)
        # Every pass stamps the installation (back if it was removed), for `release`.
        stamp(body.metadata, patch, ctx.settings.instance)
        # kopf runs an object's timers beside its change handlers: one pass at a time, or a
        # pass that read the children before another changed them applies its stale view
        # after (a Qdrant upgrade step taken back). The memo is the object's own.
        async with memo.setdefault(RECONCILE_LOCK, asyncio.Lock()):
            await fn(body, patch, ix.Indexes.from_kwargs(kw), ctx, strict)

    async def on_change(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kw: Any) -> None:
        await reconcile(body, patch, memo, kw, True)

    async def on_timer(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kw: Any) -> None:
        await reconcile(body, patch, memo, kw, False)

    common: dict[str, Any] = {"registry": registry}
    kopf.on.create(GROUP, VERSION, plural, id=f"{plural}-create", **common)(on_change)
    kopf.on.update(GROUP, VERSION, plural, id=f"{plural}-update", **common)(on_change)
    kopf.on.resume(GROUP, VERSION, plural, id=f"{plural}-resume", **common)(on_change)
    kopf.timer(
        GROUP,
        VERSION,
        plural,
        id=f"{plural}-drift",
        interval=interval,
        initial_delay=interval,
        **common,
    )(on_timer)
    kopf.timer(
        GROUP,
        VERSION,
        plural,
        id=f"{plural}-progress",
        interval=min(settings.progress_interval_seconds, interval),
        initial_delay=min(settings.progress_interval_seconds, interval),
        when=not_ready,
        **common,
    )(on_timer)


def _on_deleted(
    kind: str, dependents: Callable[[Body, dict[str, Any], ix.Indexes, Context], Awaitable[None]]
) -> Callable[..., Awaitable[None]]:
    """A delete handler for a `kind` that gateways reference: its gateways roll without it now
    (they would at their next drift check, and a pod started meanwhile could not mount its
    deleted Secrets); a failure is logged, never holding the deletion up (the drift check
    re-renders them anyway)."""

    async def handler(body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
        try:
            await dependents(body, {}, ix.Indexes.from_kwargs(kw), context(memo))
        except Exception:
            name = body.get("metadata", {}).get("name")
            logger.exception("gateways of deleted %s %s not re-rendered", kind, name)

    return handler


_policy_deleted = _on_deleted("CachePolicy", cachepolicy.dependents)
_queue_deleted = _on_deleted("BatchQueue", batchqueue.dependents)


async def _delete_collection(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await cachepolicy.delete_collection(body, context(memo))


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """A fresh registry with every handler, index, timer and probe of the operator."""
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry, id="login")(login)
    kopf.on.startup(registry=registry, id="startup")(startup)
    kopf.on.cleanup(registry=registry, id="cleanup")(cleanup)
    kopf.on.probe(registry=registry, id="initialised")(probe_context)
    for resource in RESOURCES:
        index = ix.BY_KIND[resource.kind_name]
        kopf.index(GROUP, VERSION, resource.plural, registry=registry, id=index)(ix.by_key)
    kopf.index(GROUP, VERSION, "llmgateways", registry=registry, id=ix.GATEWAYS_BY_POLICY)(
        ix.gateways_by_policy
    )
    kopf.index(GROUP, VERSION, "llmgateways", registry=registry, id=ix.GATEWAYS_BY_QUEUE)(
        ix.gateways_by_queue
    )
    kopf.index(GROUP, VERSION, "distilledmodels", registry=registry, id=ix.STUDENTS_BY_GATEWAY)(
        ix.students_by_gateway
    )
    _register_reconcile(registry, "llmgateways", _gateway, settings)
    _register_reconcile(registry, "cachepolicies", _cachepolicy, settings)
    _register_reconcile(registry, "batchqueues", _batchqueue, settings)
    _register_reconcile(registry, "distilledmodels", _distilledmodel, settings)
    kopf.on.delete(
        GROUP,
        VERSION,
        "cachepolicies",
        registry=registry,
        id="collection-delete",
        field="spec.deletionPolicy",
        value="Delete",
    )(_delete_collection)
    # Optional: no finalizer of their own (the resources carry the timers' one already).
    kopf.on.delete(
        GROUP, VERSION, "cachepolicies", registry=registry, id="dependents-delete", optional=True
    )(_policy_deleted)
    kopf.on.delete(
        GROUP, VERSION, "batchqueues", registry=registry, id="dependents-delete", optional=True
    )(_queue_deleted)
    return registry


def run_operator(
    settings: OperatorSettings,
    *,
    namespaces: list[str],
    standalone: bool,
    liveness: str | None,
) -> None:
    """Run until stopped (SIGINT/SIGTERM); blocking."""
    kopf.configure(
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    )
    kopf.run(
        registry=build_registry(settings),
        memo=kopf.Memo(settings=settings, namespaced=bool(namespaces), namespaces=namespaces),
        namespaces=namespaces,
        clusterwide=not namespaces,
        standalone=standalone,
        liveness_endpoint=liveness,
    )
