"""What every handler shares: the injected context, parsing, status writing, child state."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import kopf
from pydantic import ValidationError

from thrifty_core.api import Resource

from ..apply import KubeClient, KubeError, NotOurs
from ..builders import names
from ..builders.common import Owner
from ..builders.defaults import Defaults
from ..builders.stores import build_qdrant_auth_secret, build_redis_auth_secret
from ..conditions import PROGRESS_REASONS, Cond, false, merge, ready, transitions
from ..settings import OperatorSettings

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=Resource)
Body = Mapping[str, Any]


@dataclass(frozen=True)
class Context:
    """Clients and settings created once at startup and handed to handlers through the memo."""

    kube: KubeClient
    defaults: Defaults
    settings: OperatorSettings
    # Set when the operator shuts down (before its API client closes): a reconcile still
    # running then fails on the closed client, which is not the resource's failure.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Outcome:
    """What a reconcile found: kind-specific conditions and extra status fields."""

    conditions: list[Cond]
    fields: dict[str, Any] = field(default_factory=dict)


class InvalidSpec(Exception):
    """The spec passed the CRD schema but not the API types' own checks."""


def context(memo: Any) -> Context:
    ctx = getattr(memo, "ctx", None)
    if not isinstance(ctx, Context):
        raise kopf.TemporaryError("operator context is not initialised yet", delay=5)
    return ctx


def plain(body: Body) -> dict[str, Any]:
    """A deep JSON copy of a kopf body (safe to keep in an index or hand to pydantic)."""
    out: dict[str, Any] = json.loads(json.dumps(dict(body), default=dict))
    return out


def parse(cls: type[R], body: Body) -> R:
    """Validate a body into its API type; the error names the offending fields.

    A status that does not validate (written by an older operator) is dropped, not fatal.
    """
    data = plain(body)
    meta = data.get("metadata", {})
    # (annotations: `thrifty.dev/retrain` names a DistilledModel's run)
    kept = ("name", "namespace", "generation", "annotations")
    data["metadata"] = {k: meta[k] for k in kept if k in meta}
    status = data.pop("status", None)
    try:
        model = cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidSpec(problems) from exc
    if isinstance(status, dict) and status:
        try:
            return cls.model_validate({**data, "status": status})
        except ValidationError:
            logger.debug("ignoring an unreadable status of %s", meta.get("name"))
    return model


def now() -> datetime:
    return datetime.now(UTC)


def finish(body: Body, out: MutableMapping[str, Any], outcome: Outcome) -> Cond:
    """Write conditions (with Ready) and fields into the status patch; post Events on change."""
    summary = ready(outcome.conditions)
    conds = [summary, *outcome.conditions]
    status = body.get("status") or {}
    existing = status.get("conditions") or []
    generation = int(body.get("metadata", {}).get("generation", 0))
    out["conditions"] = merge(existing, conds, generation, now())
    out["observedGeneration"] = generation
    out.update(outcome.fields)
    obj = cast(kopf.Body, body)
    for cond in transitions(existing, conds):
        kind = "Normal" if cond.ok or cond.reason in PROGRESS_REASONS else "Warning"
        kopf.event(obj, type=kind, reason=cond.reason, message=f"{cond.type}: {cond.message}")
    return summary


async def run(
    body: Body,
    patch: kopf.Patch,
    reconcile: Callable[[], Awaitable[Outcome]],
    *,
    strict: bool,
    stopping: asyncio.Event | None = None,
) -> None:
    """Run one reconcile and write its status.

    `strict` (change handlers) raises so kopf retries transient faults and stops on permanent
    ones; timers only record the result and try again at the next interval. A reconcile
    that fails once `stopping` is set (the operator shutting down under it: a rollout of the
    operator, a drained node) leaves the status as it was, for the next operator to write.
    """
    try:
        outcome = await _cut_short_by_shutdown(reconcile, stopping)
    except _ShutDown as exc:
        logger.info(
            "reconcile of %s cut short by the operator's shutdown (%s)",
            (body.get("metadata") or {}).get("name"),
            type(exc.__cause__).__name__,
        )
        if strict:
            raise kopf.TemporaryError("the operator is shutting down", delay=10) from exc
        return
    except InvalidSpec as exc:
        finish(body, patch.status, Outcome([false("SpecValid", "InvalidSpec", str(exc))]))
        if strict:
            raise kopf.PermanentError(f"invalid spec: {exc}") from exc
        return
    except KubeError as exc:
        reason = "ApplyRejected" if exc.permanent else "ApiUnavailable"
        if isinstance(exc, NotOurs):
            reason = "NameConflict"
        finish(body, patch.status, Outcome([false("Applied", reason, exc.message)]))
        if strict and exc.permanent:
            raise kopf.PermanentError(f"the API server refused a child: {exc.message}") from exc
        if strict:
            raise kopf.TemporaryError(f"API error, will retry: {exc.message}", delay=10) from exc
        return
    except Exception as exc:  # a bug, or an input the builders cannot take: say so in status
        logger.exception("reconcile of %s failed", (body.get("metadata") or {}).get("name"))
        message = f"{type(exc).__name__}: {exc}"[:500]
        finish(body, patch.status, Outcome([false("Applied", "ReconcileError", message)]))
        if strict:
            raise kopf.TemporaryError(f"reconcile failed: {message}", delay=60) from exc
        return
    finish(body, patch.status, outcome)


class _ShutDown(Exception):
    """A reconcile failed while the operator shut down (its cause is the failure)."""


async def _cut_short_by_shutdown(
    reconcile: Callable[[], Awaitable[Outcome]], stopping: asyncio.Event | None
) -> Outcome:
    try:
        return await reconcile()
    except InvalidSpec:
        raise
    except Exception as exc:
        if stopping is not None and stopping.is_set():
            raise _ShutDown from exc
        raise


async def ensure_redis_password(kube: KubeClient, owner: Owner) -> None:
    """Create the managed Redis's password Secret unless it exists: generated once, owned by
    the resource (deleted with it), never read nor replaced by the operator. Generated again
    (its Secret was deleted), the running Redis is restarted to take it."""
    if await kube.create(build_redis_auth_secret(owner, secrets.token_urlsafe(32))):
        logger.info("generated the Redis password of %s/%s", owner.namespace, owner.name)
        await restart_for_credentials(kube, "Deployment", owner.namespace, names.redis(owner.name))


async def ensure_qdrant_key(kube: KubeClient, owner: Owner) -> None:
    """Create the managed Qdrant's API-key Secret unless it exists (as for Redis above)."""
    if await kube.create(build_qdrant_auth_secret(owner, secrets.token_urlsafe(32))):
        logger.info("generated the Qdrant API key of %s/%s", owner.namespace, owner.name)
        await restart_for_credentials(
            kube, "StatefulSet", owner.namespace, names.qdrant(owner.name)
        )


CREDENTIALS_ANNOTATION = "thrifty.dev/credentials-generated-at"
CREDENTIALS_MANAGER = "thrifty-operator-credentials"


async def restart_for_credentials(kube: KubeClient, kind: str, namespace: str, name: str) -> None:
    """Roll a store's pods after its credentials were generated again: the store reads them
    from its environment at start (Redis's `--requirepass`, Qdrant's API key), so it kept the
    old ones while its clients read the new file, and refused every one of them. An annotation
    on the pod template, as `kubectl rollout restart` does, under a field manager of its own
    (the operator's applies leave it). Nothing to do when the store is not there yet."""
    stamp = now().strftime("%Y-%m-%dT%H:%M:%SZ")
    key = CREDENTIALS_ANNOTATION.replace("/", "~1")
    tries: tuple[list[dict[str, Any]], ...] = (
        [{"op": "add", "path": f"/spec/template/metadata/annotations/{key}", "value": stamp}],
        [{"op": "add", "path": "/spec/template/metadata/annotations", "value": {}},
         {"op": "add", "path": f"/spec/template/metadata/annotations/{key}", "value": stamp}],
    )  # fmt: skip
    for ops in tries:
        try:
            await kube.patch_json("apps/v1", kind, namespace, name, ops, CREDENTIALS_MANAGER)
        except KubeError as exc:
            if exc.status == 404:
                return
            if exc.status == 422:  # the template has no annotations yet: made with them
                continue
            raise
        logger.info("restarted %s %s/%s for its new credentials", kind, namespace, name)
        return


async def apply_all(kube: KubeClient, manifests: Iterable[dict[str, Any] | None]) -> None:
    for manifest in manifests:
        if manifest is not None:
            await kube.apply(manifest)


def deployment_state(obj: dict[str, Any] | None) -> tuple[bool, str]:
    """(available, message) of a Deployment: all replicas updated and available, and no old
    replica left (the checks of `kubectl rollout status`)."""
    if obj is None:
        return False, "not created yet"
    spec, status = obj.get("spec", {}), obj.get("status", {})
    want = int(spec.get("replicas", 1))
    meta_gen = int(obj.get("metadata", {}).get("generation", 0))
    updated = int(status.get("updatedReplicas", 0))
    available = int(status.get("availableReplicas", 0))
    total = int(status.get("replicas", updated))
    seen = int(status.get("observedGeneration", 0)) >= meta_gen
    ok = seen and updated >= want and available >= want and total <= updated
    message = f"{available}/{want} replicas available, {updated} updated"
    if total > updated:
        message += f", {total - updated} old pending termination"
    if not ok:
        # What the Deployment controller itself reports as stuck (pods it cannot create: a
        # quota, a refused pod spec; a rollout past its progress deadline), said here too.
        for cond in _stuck(obj):
            if cond.get("message"):
                message += f"; {cond['message']}"
    return ok, message


def _stuck(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        cond
        for cond in (obj.get("status") or {}).get("conditions") or ()
        if (cond.get("type") == "ReplicaFailure" and cond.get("status") == "True")
        or cond.get("reason") == "ProgressDeadlineExceeded"
    ]


def rollout_stuck(obj: dict[str, Any] | None) -> bool:
    """Whether a Deployment's controller says its rollout is stuck (pods it cannot create, a
    rollout past its progress deadline)."""
    return obj is not None and bool(_stuck(obj))


def rollout_reason(obj: dict[str, Any] | None, progressing: str = "Progressing") -> str:
    """The reason of a Deployment that is not available: `RolloutStuck` when it is stuck (a
    Warning), else `progressing` (a rollout on its way: a Normal event)."""
    return "RolloutStuck" if rollout_stuck(obj) else progressing


def statefulset_state(obj: dict[str, Any] | None) -> tuple[bool, str]:
    """(ready, message) of a StatefulSet: the current spec rolled out to every replica, all
    ready (a rollout in progress is not ready, though the old pods still are)."""
    if obj is None:
        return False, "not created yet"
    want = int(obj.get("spec", {}).get("replicas", 1))
    status = obj.get("status", {})
    ready_n = int(status.get("readyReplicas", 0))
    updated = int(status.get("updatedReplicas", 0))
    seen = int(status.get("observedGeneration", 0)) >= int(
        obj.get("metadata", {}).get("generation", 0)
    )
    current = status.get("currentRevision") == status.get("updateRevision")
    ok = seen and current and updated >= want and ready_n >= want
    return ok, f"{ready_n}/{want} replicas ready, {updated} updated"


# Reasons the kubelet gives for a container that waits and will not start without a change (an
# image to mirror, a crash to look at, a Secret or ConfigMap to create).
STUCK_WAITING = frozenset(
    "ErrImagePull ImagePullBackOff InvalidImageName CrashLoopBackOff CreateContainerConfigError "
    "CreateContainerError RunContainerError".split()
)
PROBLEM_LIMIT = 300  # characters of the kubelet's or scheduler's message


def pod_problem(pod: dict[str, Any] | None) -> str:
    """Why a store's pod does not run, in the scheduler's or the kubelet's words ('' when they
    report nothing that waits for a change): it cannot be scheduled, or a container cannot
    start (an image it cannot pull, a crash loop with its last exit and restarts)."""
    if pod is None:
        return ""
    name = pod.get("metadata", {}).get("name", "")
    status = pod.get("status") or {}
    for cond in status.get("conditions") or ():
        if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
            if cond.get("status") == "False":
                return f"pod {name} cannot be scheduled: {cond.get('message', '')}"[:PROBLEM_LIMIT]
    containers = [
        *(status.get("initContainerStatuses") or ()),
        *(status.get("containerStatuses") or ()),
    ]
    for container in containers:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        if reason not in STUCK_WAITING:
            continue
        problem = f"pod {name}: container {container.get('name', '')} {reason}"
        last = (container.get("lastState") or {}).get("terminated") or {}
        if last:
            exit_ = last.get("reason") or f"code {last.get('exitCode')}"
            problem += f" (last exit: {exit_}, {container.get('restartCount', 0)} restarts)"
        if waiting.get("message"):
            problem += f": {waiting['message']}"
        return problem[:PROBLEM_LIMIT]
    return ""


async def statefulset_pod_problem(kube: KubeClient, namespace: str, name: str) -> str:
    """`pod_problem` of the single pod of the StatefulSet `name`. An operator whose role
    cannot read pods (one granted by hand before it needed to) reports nothing: the detail
    helps, the reconcile does not depend on it."""
    try:
        pod = await kube.get("v1", "Pod", namespace, f"{name}-0")
    except KubeError as exc:
        if exc.status != 403:
            raise
        logger.warning("cannot read pod %s/%s-0 (403): grant get on pods", namespace, name)
        return ""
    return pod_problem(pod)


def owned_by(obj: dict[str, Any], owner: Owner) -> bool:
    """`obj` names `owner` (by uid) among its owner references."""
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner.uid for ref in refs)


async def delete_owned(
    kube: KubeClient, owner: Owner, api_version: str, kind: str, name: str
) -> None:
    """Delete the object if `owner` owns it: never one of the same name that someone else made
    (a user's own HPA, a same-named queue's Redis)."""
    found = await kube.get(api_version, kind, owner.namespace, name)
    if found is not None and owned_by(found, owner):
        await kube.delete(api_version, kind, owner.namespace, name)


def job_state(obj: dict[str, Any] | None) -> str:
    """Complete, Failed, Running or Missing, from the Job's conditions."""
    if obj is None:
        return "Missing"
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"])
    return "Running"


def owner_key(body: Body) -> tuple[str, str]:
    meta = body.get("metadata", {})
    return str(meta.get("namespace", "default")), str(meta.get("name", ""))
