"""LLMGateway: render the config from the spec and the policies it references, apply children.

`sync` is also called by the CachePolicy, BatchQueue and DistilledModel handlers when they
change, so the gateways using them re-render and roll (and only those).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from thrifty_core.api import BatchQueue, CachePolicy, DistilledModel, LLMGateway
from thrifty_core.config import GatewayConfig, dump_config
from thrifty_core.render import render_gateway_config, student_api_key

from ..apply import KubeError
from ..builders import gateway as gw_builders
from ..builders import names
from ..builders.batch import build_worker, worker_secret_refs
from ..builders.common import Owner, short_hash
from ..builders.secrets import gateway_secret_refs
from ..conditions import Cond, false, true
from .common import (
    Context,
    InvalidSpec,
    Outcome,
    apply_all,
    delete_owned,
    deployment_state,
    finish,
    parse,
    rollout_reason,
)
from .indexes import Indexes

logger = logging.getLogger(__name__)

HPA = ("autoscaling/v2", "HorizontalPodAutoscaler")
PDB = ("policy/v1", "PodDisruptionBudget")


class MissingReference(Exception):
    """A referenced resource does not exist (or has an invalid spec: `InvalidReference`)."""


class InvalidReference(MissingReference):
    """A referenced resource exists but its spec does not validate (an edit to fix, or a
    rule of a newer operator): its Secrets, volume and stores are still there."""


def _resolve(ix: Indexes, kind: type[Any], namespace: str, name: str) -> Any:
    body = ix.body(kind.kind_name, namespace, name)
    if body is None:
        raise MissingReference(f"{kind.kind_name} {name!r} not found in {namespace}")
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        # Going: its Secrets and volume go with it once its finalizers are done, so the
        # gateway rolls without it now, while they are still there to unmount.
        raise MissingReference(f"{kind.kind_name} {name!r} is being deleted in {namespace}")
    try:
        return parse(kind, body)
    except InvalidSpec as exc:
        raise InvalidReference(f"{kind.kind_name} {name!r} has an invalid spec: {exc}") from exc


def stand_in(name: str, namespace: str) -> CachePolicy:
    """What a missing (confirmed absent) CachePolicy renders as: both layers off, no stores. Its
    routes stay theirs (they do not fall back to the gateway's default policy, whose scope
    and rules may differ) and go uncached; nothing of the missing policy is mounted."""
    return CachePolicy.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "exact": {"enabled": False},
                "semantic": {"enabled": False},
                "stores": {"redis": {"managed": False}, "qdrant": {"managed": False}},
            },
        }
    )


@dataclass
class Gathered:
    """The policies, queue and students a gateway's config is rendered from. A missing
    CachePolicy is a stand-in (see above) and a missing BatchQueue is None: the gateway runs
    without them, rather than freezing its Deployment on their deleted Secrets and volume
    (a pod started then could not mount them); `missing` says what is left out.

    An invalid one (present, but its spec does not validate) is not left out: its Secrets,
    volume and stores are all still there, so the gateway stays on its last applied config
    (`invalid` says why) rather than rolling to an uncached, unbatched one and back."""

    policies: dict[str, CachePolicy]
    queue: BatchQueue | None
    students: list[DistilledModel]
    missing: list[str] = field(default_factory=list)
    queue_missing: str = ""
    absent_policies: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    queue_invalid: str = ""

    @property
    def found(self) -> int:
        return len(self.policies) - len(self.absent_policies)


def _uncached_routes(gateway: LLMGateway, policy: str) -> list[str]:
    spec = gateway.spec
    default = spec.cache_policy_ref.name if spec.cache_policy_ref else None
    return [
        r.name
        for r in spec.routes
        if (r.cache_policy_ref.name if r.cache_policy_ref else default) == policy
    ]


def gather(gateway: LLMGateway, ix: Indexes) -> Gathered:
    """The policies, queue and students the gateway's config is rendered from."""
    ns = gateway.metadata.namespace
    spec = gateway.spec
    wanted = {r.cache_policy_ref.name for r in spec.routes if r.cache_policy_ref}
    if spec.cache_policy_ref:
        wanted.add(spec.cache_policy_ref.name)
    out = Gathered({}, None, [])
    for name in sorted(wanted):
        try:
            out.policies[name] = _resolve(ix, CachePolicy, ns, name)
        except InvalidReference as exc:
            out.invalid.append(str(exc))
        except MissingReference as exc:
            out.policies[name] = stand_in(name, ns)
            out.absent_policies.append(name)
            routes = ", ".join(_uncached_routes(gateway, name)) or "none"
            out.missing.append(f"{exc}; its routes are served uncached meanwhile ({routes})")
    if spec.batch_queue_ref:
        try:
            out.queue = _resolve(ix, BatchQueue, ns, spec.batch_queue_ref.name)
        except InvalidReference as exc:
            out.queue_invalid = str(exc)
            out.invalid.append(str(exc))
        except MissingReference as exc:
            out.queue_missing = str(exc)
            out.missing.append(
                f"{exc}; no batching meanwhile (a deferred request is answered at once, at "
                "full price)"
            )
    route_names = {r.name for r in spec.routes}
    for name in ix.students_of(ns, gateway.metadata.name):
        try:
            student = _resolve(ix, DistilledModel, ns, name)
        except MissingReference as exc:
            logger.warning(
                "skipping student %s of gateway %s: %s", name, gateway.metadata.name, exc
            )
            continue
        if student.spec.teacher.route in route_names:  # a student of an unknown route reports it
            out.students.append(student)
    return out


async def sync(body: dict[str, Any], ix: Indexes, ctx: Context) -> Outcome:
    """Render and apply everything for one gateway; return its conditions and status fields."""
    gateway = parse(LLMGateway, body)
    owner = Owner.from_body(body)
    ns = owner.namespace
    fields: dict[str, Any] = {
        "endpoint": names.gateway_endpoint(owner.name, ns),
        "routes": [r.name for r in gateway.spec.routes],
    }
    gathered = gather(gateway, ix)
    policies, queue, students = gathered.policies, gathered.queue, gathered.students
    queue_cond = queue_condition(gateway, ix)
    if gathered.queue_missing:
        queue_cond = false("BatchQueueReady", "MissingReference", gathered.queue_missing)
    if gathered.queue_invalid and queue_cond.ok:
        queue_cond = false("BatchQueueReady", "InvalidReference", gathered.queue_invalid)
    if gathered.invalid:
        return await _kept(gateway, owner, gathered, queue_cond, fields, ctx)
    if not queue_cond.ok:
        queue = None  # refused: neither its stream, its files nor its worker
    try:
        config = render_gateway_config(gateway, policies, queue, students)
        config, ledger_note = _shared_ledger(gateway, gathered, config)
    except KeyError as exc:
        message = str(exc.args[0]) if exc.args else str(exc)
        return Outcome(
            [
                false("ConfigRendered", "MissingReference", message),
                false("Available", "WaitingForConfig", "the config cannot be rendered yet"),
            ],
            fields,
        )
    except ValueError as exc:
        return Outcome(
            [
                false("ConfigRendered", "RenderFailed", str(exc)),
                false("Available", "WaitingForConfig", "the config cannot be rendered"),
            ],
            fields,
        )
    if ledger_note:
        gathered.missing.append(ledger_note)
    text = dump_config(config)
    digest = short_hash(text)
    refs = gateway_secret_refs(gateway, policies.values(), queue)
    mounts = gw_builders.GatewayMounts(
        secret_refs=refs,
        batch_queue=queue.metadata.name if queue else None,
        students=[s.metadata.name for s in students],
        student_keys=[
            student_api_key(s.metadata.name) for s in students if s.spec.student.kind == "causal-lm"
        ],
    )
    defaults = ctx.defaults
    if gateway.spec.autoscaling.enabled:
        live = await ctx.kube.get("apps/v1", "Deployment", ns, names.gateway(owner.name))
        if live is not None and gw_builders.owns_replicas(live, ctx.kube.field_manager):
            await ctx.kube.apply(
                gw_builders.replicas_handover(live), field_manager=gw_builders.REPLICAS_HANDOVER
            )
    await apply_all(
        ctx.kube,
        [
            gw_builders.build_config_map(owner, text, digest),
            gw_builders.build_deployment(gateway, owner, digest, mounts, defaults),
            gw_builders.build_service(owner),
        ],
    )
    for (api_version, kind), manifest in (
        (HPA, gw_builders.build_hpa(gateway, owner)),
        (PDB, gw_builders.build_pdb(gateway, owner)),
    ):
        if manifest is not None:
            await ctx.kube.apply(manifest)
            continue
        # Turned off: ours is deleted, never one of that name the user made (their own HPA
        # after switching ours off, say).
        await delete_owned(ctx.kube, owner, api_version, kind, names.gateway(owner.name))
    if queue is not None:
        # The worker gets only the keys it reads (providers, Redis): not the tenants' and
        # admin key hashes, nor the Qdrant and embedding keys.
        worker_refs = worker_secret_refs(gateway, policies.values(), queue)
        await _sync_worker(owner.name, queue, digest, worker_refs, ix, ctx)
    deployment = await ctx.kube.get("apps/v1", "Deployment", ns, names.gateway(owner.name))
    available, message = deployment_state(deployment)
    status = (deployment or {}).get("status", {})
    fields.update(
        configHash=digest,
        replicas=int(status.get("replicas", 0)),
        readyReplicas=int(status.get("readyReplicas", 0)),
    )
    rendered = f"config {digest} from {gathered.found} cache policies"
    conds: list[Cond] = [
        # First: Ready says what is missing rather than how the rollout goes.
        false("ReferencesResolved", "MissingReference", "; ".join(gathered.missing))
        if gathered.missing
        else true(
            "ReferencesResolved",
            "Resolved",
            "every referenced Thrifty resource exists (Secrets are not read by the operator: "
            "the kubelet mounts them, and a missing one keeps the pods from starting)",
        ),
        true("ConfigRendered", "Rendered", rendered),
        true("Available", "MinimumReplicasAvailable", message)
        if available
        else false("Available", rollout_reason(deployment), message),
    ]
    if gateway.spec.batch_queue_ref is not None:
        conds.append(queue_cond)
    return Outcome(conds, fields)


def _shared_ledger(
    gateway: LLMGateway, gathered: Gathered, config: GatewayConfig
) -> tuple[GatewayConfig, str]:
    """The ledger (usage figures, budget spend, tenant rate limits) lives in the default
    policy's Redis; with that policy absent it would fall back to each replica's memory
    (spend forgotten, so budgets start afresh; rate limits multiplied by the replicas). It
    goes to another Redis the gateway already uses (another of its policies', else its
    BatchQueue's), or, with none, Ready says plainly that it is per replica meanwhile.
    Returns the config and what to say ('' when the default policy is there)."""
    ref = gateway.spec.cache_policy_ref
    if ref is None or ref.name not in gathered.absent_policies or config.ledger.redis_url:
        return config, ""
    candidates = [
        (f"CachePolicy {name!r}", policy.stores.redis_url, policy.stores.redis_password)
        for name, policy in sorted(config.cache_policies.items())
        if name not in gathered.absent_policies and policy.stores.redis_url
    ]
    if config.batch is not None and config.batch.redis_url:
        candidates.append(
            (
                f"BatchQueue {config.batch.name!r}",
                config.batch.redis_url,
                config.batch.redis_password,
            )
        )
    if not candidates:
        return config, (
            f"without CachePolicy {ref.name!r} the ledger has no shared Redis: usage, budget "
            "spend and rate limits are counted by each replica on its own (budgets start "
            "afresh, a rate limit is allowed once per replica) until it returns"
        )
    where, url, password = candidates[0]
    ledger = config.ledger.model_copy(update={"redis_url": url, "redis_password": password})
    return config.model_copy(update={"ledger": ledger}), (
        f"the ledger (usage, budget spend, rate limits) is kept in the Redis of {where} "
        f"until CachePolicy {ref.name!r} returns (spend recorded in the policy's Redis is not "
        "seen meanwhile)"
    )


async def _kept(
    gateway: LLMGateway,
    owner: Owner,
    gathered: Gathered,
    queue_cond: Cond,
    fields: dict[str, Any],
    ctx: Context,
) -> Outcome:
    """An invalid reference: nothing is rendered nor applied (the Deployment, its config and
    the batch worker stay as last applied, their Secrets and volumes all still there) until
    it validates again or is deleted."""
    deployment = await ctx.kube.get(
        "apps/v1", "Deployment", owner.namespace, names.gateway(owner.name)
    )
    message = "; ".join(gathered.invalid)
    kept = (
        "the gateway stays on its last applied config until it is fixed"
        if deployment is not None
        else "the gateway is not deployed until it is fixed"
    )
    available, state = deployment_state(deployment)
    conds: list[Cond] = [
        false("ReferencesResolved", "InvalidReference", f"{message}; {kept}"),
        false("ConfigRendered", "InvalidReference", f"not rendered: {message}"),
        true("Available", "MinimumReplicasAvailable", state)
        if available
        else false("Available", rollout_reason(deployment), state),
    ]
    if gateway.spec.batch_queue_ref is not None:
        conds.append(queue_cond)
    return Outcome(conds, fields)


def queue_condition(gateway: LLMGateway, ix: Indexes) -> Cond:
    """BatchQueueReady: a queue serves one gateway (its worker runs that gateway's providers,
    keys and tenants), the oldest that references it; any other is refused, by name."""
    ref = gateway.spec.batch_queue_ref
    if ref is None:
        return true("BatchQueueReady", "NotUsed", "no batchQueueRef")
    ns, name = gateway.metadata.namespace, gateway.metadata.name
    holder = ix.queue_holder(ns, ref.name)
    if holder is not None and holder != name:
        return false(
            "BatchQueueReady",
            "BatchQueueInUse",
            f"BatchQueue {ref.name!r} already serves LLMGateway {holder!r}; a queue serves one "
            "gateway (give this one its own BatchQueue)",
        )
    return true("BatchQueueReady", "Serving", f"BatchQueue {ref.name!r} runs this gateway's config")


async def _sync_worker(
    gateway: str, queue: BatchQueue, digest: str, refs: Any, ix: Indexes, ctx: Context
) -> None:
    """Only the gateway the queue serves drives its worker's config."""
    ns = queue.metadata.namespace
    holder = ix.queue_holder(ns, queue.metadata.name)
    if holder is not None and holder != gateway:
        return
    queue_body = ix.body("BatchQueue", ns, queue.metadata.name)
    if queue_body is None:
        return
    owner = Owner.from_body(queue_body)
    await ctx.kube.apply(build_worker(queue, owner, gateway, digest, refs, ctx.defaults))


async def resync(ix: Indexes, ctx: Context, namespace: str, gateways: list[str]) -> None:
    """Re-render the given gateways after a dependency changed, and record their status."""
    for name in gateways:
        body = ix.body("LLMGateway", namespace, name)
        if body is None:
            continue
        try:
            outcome = await sync(body, ix, ctx)
        except InvalidSpec:
            continue  # the gateway's own handler reports it
        except KubeError as exc:  # its own handler or drift check retries
            logger.warning("gateway %s not re-rendered: %s", name, exc.message)
            continue
        status: dict[str, Any] = {}
        finish(body, status, outcome)
        try:
            await ctx.kube.patch_status(
                "thrifty.dev/v1alpha1", "LLMGateway", namespace, name, status
            )
        except KubeError as exc:
            logger.warning("status of gateway %s not written: %s", name, exc.message)
