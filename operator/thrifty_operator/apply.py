"""A small Kubernetes client: server-side apply under one field manager, get, list, delete.

Wraps `kubernetes_asyncio.client.ApiClient` with a fixed table of the kinds the operator
manages (no discovery round trips). API errors become `KubeError` with the HTTP status, so
handlers can tell a bad manifest (4xx: permanent) from a transient fault (5xx, 429: retry).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException

from thrifty_core.api import API_VERSION, RESOURCES

FIELD_MANAGER = "thrifty-operator"


@dataclass(frozen=True)
class KindInfo:
    plural: str
    namespaced: bool = True


KINDS: dict[tuple[str, str], KindInfo] = {
    ("v1", "ConfigMap"): KindInfo("configmaps"),
    ("v1", "Service"): KindInfo("services"),
    ("v1", "ServiceAccount"): KindInfo("serviceaccounts"),
    ("v1", "PersistentVolumeClaim"): KindInfo("persistentvolumeclaims"),
    ("v1", "Pod"): KindInfo("pods"),
    ("v1", "Secret"): KindInfo("secrets"),
    ("networking.k8s.io/v1", "NetworkPolicy"): KindInfo("networkpolicies"),
    ("apps/v1", "Deployment"): KindInfo("deployments"),
    ("apps/v1", "StatefulSet"): KindInfo("statefulsets"),
    ("batch/v1", "Job"): KindInfo("jobs"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): KindInfo("horizontalpodautoscalers"),
    ("policy/v1", "PodDisruptionBudget"): KindInfo("poddisruptionbudgets"),
    ("rbac.authorization.k8s.io/v1", "Role"): KindInfo("roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): KindInfo("rolebindings"),
    **{(API_VERSION, r.kind_name): KindInfo(r.plural) for r in RESOURCES},
}


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 when there was no response)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message

    @property
    def permanent(self) -> bool:
        """4xx other than 409/429: retrying the same request cannot succeed."""
        return 400 <= self.status < 500 and self.status not in (404, 409, 429)


def path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    """The REST path of a collection or an object of a known kind."""
    info = KINDS.get((api_version, kind))
    if info is None:
        raise KeyError(f"unknown kind {api_version}/{kind}")
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    ns = f"/namespaces/{namespace}" if info.namespaced and namespace else ""
    out = f"{prefix}{ns}/{info.plural}"
    return f"{out}/{name}" if name else out


def _message(body: Any, fallback: Any) -> str:
    """The API server's Status message, else the fallback text."""
    try:
        parsed = json.loads(body or "{}")
        return str(parsed.get("message") or fallback)
    except (ValueError, TypeError, AttributeError):
        return str(fallback)


class NotOurs(KubeError):
    """A child's name is taken by an object the resource does not own (a user's own): it is
    not applied (an apply would take it over, and the garbage collector delete it with the
    resource). Permanent until that object goes or the resource is renamed."""

    def __init__(self, message: str) -> None:
        super().__init__(409, message)

    @property
    def permanent(self) -> bool:
        return True


def _controller(meta: dict[str, Any]) -> dict[str, Any] | None:
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller"):
            return dict(ref)
    return None


class KubeClient:
    """The operator's API access; one instance per operator, kept in kopf's memo."""

    def __init__(self, api: ApiClient, field_manager: str = FIELD_MANAGER) -> None:
        self._api = api
        self.field_manager = field_manager
        # (apiVersion, kind, namespace, name, owner uid) of children seen to be the owner's
        self._ours: set[tuple[str, str, str, str, str]] = set()

    async def _call(
        self,
        method: str,
        url: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        try:
            resp = await self._api.call_api(
                url,
                method,
                query_params=query or [],
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
            )
            data = await resp.read()
            status = int(resp.status)
        except ApiException as exc:
            raise KubeError(int(exc.status or 0), _message(exc.body, exc.reason)) from exc
        except (OSError, TimeoutError) as exc:
            raise KubeError(0, f"{type(exc).__name__}: {exc}") from exc
        if not 200 <= status <= 299:
            raise KubeError(status, _message(data, f"HTTP {status}"))
        result: dict[str, Any] = json.loads(data) if data else {}
        return result

    async def apply(
        self, manifest: dict[str, Any], field_manager: str | None = None
    ) -> dict[str, Any]:
        """Server-side apply (force: the operator owns the fields it sets), as the operator's
        field manager unless another is named (a hand-over of a field, see `gateway`)."""
        meta = manifest["metadata"]
        ref = _controller(meta) if field_manager is None else None
        if ref is not None:
            await self._check_ours(manifest, ref)
        url = path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
        applied = await self._call(
            "PATCH",
            url,
            query=[("fieldManager", field_manager or self.field_manager), ("force", "true")],
            body=manifest,
            content_type="application/apply-patch+yaml",
        )
        if ref is not None:
            self._ours.add(self._key(manifest, str(ref["uid"])))
        return applied

    @staticmethod
    def _key(manifest: dict[str, Any], owner: str) -> tuple[str, str, str, str, str]:
        meta = manifest["metadata"]
        kind = (manifest["apiVersion"], manifest["kind"])
        return (*kind, str(meta.get("namespace") or ""), str(meta["name"]), owner)

    async def _check_ours(self, manifest: dict[str, Any], owner: dict[str, Any]) -> None:
        """Raise `NotOurs` when the child's name is taken by an object `owner` (its controller
        reference) does not own (read once per child: then it is known to be the owner's)."""
        uid = str(owner["uid"])
        if self._key(manifest, uid) in self._ours:
            return
        meta = manifest["metadata"]
        found = await self.get(
            manifest["apiVersion"], manifest["kind"], meta.get("namespace") or "", meta["name"]
        )
        if found is None:
            return
        refs = found.get("metadata", {}).get("ownerReferences") or ()
        if any(str(ref.get("uid")) == uid for ref in refs):
            return
        if any((r.get("kind"), r.get("name")) == (owner["kind"], owner["name"]) for r in refs):
            # An earlier resource of this name, deleted: its children go with it in a moment.
            raise KubeError(
                409,
                f"{manifest['kind']} {meta['name']} still belongs to an earlier "
                f"{owner['kind']} {owner['name']} being deleted; retrying",
            )
        whose = next((f"{r.get('kind')} {r.get('name')}" for r in refs), "nobody: a user's own")
        raise NotOurs(
            f"{manifest['kind']} {meta['name']} exists and is not this resource's (owned by "
            f"{whose}); it is left alone: delete it, or give this resource another name"
        )

    async def create(self, manifest: dict[str, Any]) -> bool:
        """Create the object unless it exists (then leave it untouched); True when created.

        For what must never be overwritten (a generated password): no read, no apply."""
        meta = manifest["metadata"]
        url = path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        try:
            await self._call(
                "POST", url, query=[("fieldManager", self.field_manager)], body=manifest
            )
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        try:
            return await self._call("GET", path(api_version, kind, namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, api_version: str, kind: str, namespace: str, selector: dict[str, str]
    ) -> list[dict[str, Any]]:
        label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        data = await self._call(
            "GET", path(api_version, kind, namespace), query=[("labelSelector", label_selector)]
        )
        items: list[dict[str, Any]] = data.get("items", [])
        return items

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete (background propagation); False when it was already gone."""
        try:
            await self._call(
                "DELETE",
                path(api_version, kind, namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def patch_json(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        ops: Sequence[dict[str, Any]],
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        """A JSON patch (RFC 6902) of an object; its `test` operations make it conditional
        (the API server refuses the whole patch, 422, when one fails)."""
        return await self._call(
            "PATCH",
            path(api_version, kind, namespace, name),
            query=[("fieldManager", field_manager)] if field_manager else None,
            body=[dict(op) for op in ops],
            content_type="application/json-patch+json",
        )

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the status subresource of one of our custom resources."""
        return await self._call(
            "PATCH",
            path(api_version, kind, namespace, name) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )


async def connect() -> ApiClient:
    """An API client from the in-cluster service account, else from KUBECONFIG."""
    cfg = Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config(client_configuration=cfg)
    return ApiClient(configuration=cfg)
