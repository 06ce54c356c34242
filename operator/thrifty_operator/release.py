"""Hand back the resources of namespaces the operator no longer watches.

Every Thrifty resource carries the operator's finalizer (`thrifty.dev/finalizer`). An operator
restarted with a namespace dropped from its list (`operator.watchNamespaces`) never looks at
that namespace again, so deleting a resource there, or the namespace, would wait forever.

Each resource an operator reconciles is stamped with the operator's instance
(`thrifty.dev/operator: <release namespace>/<release name>`, set by the chart). At startup, an
operator given exact namespaces lists its resources cluster-wide (the chart's ClusterRole on
the thrifty.dev resources allows it) and, for those stamped with its own instance in a
namespace it no longer watches, removes its finalizer and the stamp. Resources of another
installation (another stamp), or never stamped (reconciled only by an older operator), are
left alone. The JSON patch tests the finalizer and the stamp it removes, so a resource changed
meanwhile is skipped, never stripped of another's finalizer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

import kopf
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from thrifty_core.api import API_VERSION, RESOURCES
from thrifty_core.api.base import DNS_LABEL

from .apply import KubeClient, KubeError
from .settings import FINALIZER, PREFIX

OPERATOR_ANNOTATION = f"{PREFIX}/operator"
_EXACT_NAME = re.compile(DNS_LABEL)

logger = logging.getLogger(__name__)


def stamp(meta: Mapping[str, Any], patch: kopf.Patch, instance: str) -> None:
    """Add the instance stamp to the patch of a resource being reconciled, once."""
    if instance and (meta.get("annotations") or {}).get(OPERATOR_ANNOTATION) != instance:
        patch.metadata.annotations[OPERATOR_ANNOTATION] = instance


def exact_names(namespaces: Iterable[str]) -> bool:
    """True when every entry names one namespace (kopf would also take glob patterns, which
    cannot say whether a namespace is still watched)."""
    names = list(namespaces)
    return bool(names) and all(_EXACT_NAME.match(n) for n in names)


def release_patch(
    item: Mapping[str, Any], instance: str, watched: Iterable[str]
) -> list[dict[str, Any]]:
    """The JSON patch that hands `item` back, or [] when it is not ours to release."""
    meta = item.get("metadata") or {}
    if meta.get("namespace") in set(watched):
        return []
    if (meta.get("annotations") or {}).get(OPERATOR_ANNOTATION) != instance or not instance:
        return []
    finalizers = list(meta.get("finalizers") or [])
    if FINALIZER not in finalizers:
        return []
    at = finalizers.index(FINALIZER)
    key = "/metadata/annotations/" + OPERATOR_ANNOTATION.replace("~", "~0").replace("/", "~1")
    return [
        {"op": "test", "path": f"/metadata/finalizers/{at}", "value": FINALIZER},
        {"op": "remove", "path": f"/metadata/finalizers/{at}"},
        {"op": "test", "path": key, "value": instance},
        {"op": "remove", "path": key},
    ]


def _transient(exc: BaseException) -> bool:
    """No answer, throttled (429) or a server error: worth another try (a 404, a kind whose
    CRD is not installed, is not)."""
    return isinstance(exc, KubeError) and (exc.status in (0, 429) or exc.status >= 500)


async def _list_all(kube: KubeClient, kind: str) -> list[dict[str, Any]]:
    """Every `kind` in the cluster; transient failures (an API server starting, a CRD's storage
    re-initialising: 429) are retried for about half a minute."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(6),
        wait=wait_exponential(multiplier=0.5, max=10),
        reraise=True,
    ):
        with attempt:
            return await kube.list(API_VERSION, kind, "", {})
    raise AssertionError("unreachable")  # AsyncRetrying either returns or raises


async def release_unwatched(kube: KubeClient, instance: str, watched: list[str]) -> list[str]:
    """Release this instance's resources outside `watched`; returns "kind ns/name" of each
    released. Failures are logged and leave the resource as it was (retried next start)."""
    if not instance:
        return []
    if not exact_names(watched):
        logger.info("namespaces given as patterns: resources outside them are not released")
        return []
    released = []
    for kind in (resource.kind_name for resource in RESOURCES):
        try:
            items = await _list_all(kube, kind)
        except KubeError as exc:
            logger.warning("could not list %s cluster-wide to release them: %s", kind, exc)
            continue
        for item in items:
            ops = release_patch(item, instance, watched)
            if not ops:
                continue
            meta = item["metadata"]
            ref = f"{kind.lower()} {meta['namespace']}/{meta['name']}"
            try:
                await kube.patch_json(API_VERSION, kind, meta["namespace"], meta["name"], ops)
            except KubeError as exc:
                logger.warning("%s not released (%s)", ref, exc)
                continue
            released.append(ref)
            logger.warning(
                "%s released: its namespace is no longer watched; its finalizer is removed%s",
                ref,
                " while it was being deleted (its cleanup is not done)"
                if meta.get("deletionTimestamp")
                else "",
            )
    return released
