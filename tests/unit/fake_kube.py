"""An in-memory stand-in for the operator's `KubeClient`, for handler unit tests.

Objects are kept by (kind, name) in one namespace. `apply` replaces the object with the
manifest unless a test's subclass merges (`merged`), as server-side apply keeps fields other
managers own; `delete` records what was deleted. The end-to-end tests run the real API server.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

Key = tuple[str, str]


class FakeKube:
    field_manager = "thrifty-operator"

    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.deleted: list[Key] = []

    @staticmethod
    def key(manifest: dict[str, Any]) -> Key:
        return manifest["kind"], manifest["metadata"]["name"]

    async def get(self, _api: str, kind: str, _ns: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((kind, name))
        return deepcopy(found) if found is not None else None

    def merged(
        self, old: dict[str, Any] | None, manifest: dict[str, Any], manager: str
    ) -> dict[str, Any]:
        """The object an apply of `manifest` by `manager` over `old` leaves (here: the
        manifest, whatever was there and whoever applies it)."""
        del old, manager
        return deepcopy(manifest)

    async def apply(
        self, manifest: dict[str, Any], field_manager: str | None = None
    ) -> dict[str, Any]:
        key = self.key(manifest)
        new = self.merged(self.objects.get(key), manifest, field_manager or self.field_manager)
        self.objects[key] = new
        return deepcopy(new)

    async def create(self, manifest: dict[str, Any]) -> bool:
        key = self.key(manifest)
        if key in self.objects:
            return False
        self.objects[key] = deepcopy(manifest)
        return True

    async def delete(self, _api: str, kind: str, _ns: str, name: str) -> bool:
        self.deleted.append((kind, name))
        return self.objects.pop((kind, name), None) is not None

    async def patch_json(
        self,
        _api: str,
        kind: str,
        _ns: str,
        name: str,
        ops: Any,
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        """JSON-patch `add` operations (what the operator sends), or a 404."""
        from thrifty_operator.apply import KubeError

        del field_manager
        found = self.objects.get((kind, name))
        if found is None:
            raise KubeError(404, f"{kind} {name} not found")
        for op in ops:
            *parents, last = [p.replace("~1", "/") for p in op["path"].strip("/").split("/")]
            node = found
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = deepcopy(op["value"])
        return deepcopy(found)
