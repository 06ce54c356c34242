"""Which resources an operator hands back when it stops watching their namespace."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from thrifty_operator.apply import KubeError
from thrifty_operator.release import (
    OPERATOR_ANNOTATION,
    exact_names,
    release_patch,
    release_unwatched,
    stamp,
)
from thrifty_operator.settings import FINALIZER

ME = "thrifty-system/thrifty"


def _item(
    ns: str = "gone", stamp_value: str | None = ME, finalizers: list[str] | None = None
) -> dict[str, Any]:
    annotations = {OPERATOR_ANNOTATION: stamp_value} if stamp_value is not None else {}
    return {
        "metadata": {
            "name": "g",
            "namespace": ns,
            "annotations": annotations,
            "finalizers": [FINALIZER] if finalizers is None else finalizers,
        }
    }


def test_stamp_is_added_once_and_not_without_an_instance() -> None:
    patch = kopf.Patch()
    stamp({"annotations": {}}, patch, ME)
    assert patch == {"metadata": {"annotations": {OPERATOR_ANNOTATION: ME}}}
    for meta, instance in (({"annotations": {OPERATOR_ANNOTATION: ME}}, ME), ({}, "")):
        untouched = kopf.Patch()
        stamp(meta, untouched, instance)
        assert untouched == {}


def test_another_installations_stamp_is_replaced_while_watched() -> None:
    """A namespace watched by this operator is its own (two operators on one namespace would
    fight over every child anyway)."""
    patch = kopf.Patch()
    stamp({"annotations": {OPERATOR_ANNOTATION: "other/x"}}, patch, ME)
    assert patch["metadata"]["annotations"][OPERATOR_ANNOTATION] == ME


@pytest.mark.parametrize("deleting", [False, True])
def test_own_resource_outside_the_watch_list_is_released_by_a_conditional_patch(
    deleting: bool,
) -> None:
    """Also one being deleted: no operator will finish its cleanup there, and it would wait
    for ever."""
    item = _item(finalizers=["example.com/keep", FINALIZER])
    if deleting:
        item["metadata"]["deletionTimestamp"] = "2026-12-07T10:00:00Z"
    ops = release_patch(item, ME, ["kept"])
    assert ops == [
        {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
        {"op": "remove", "path": "/metadata/finalizers/1"},
        {"op": "test", "path": "/metadata/annotations/thrifty.dev~1operator", "value": ME},
        {"op": "remove", "path": "/metadata/annotations/thrifty.dev~1operator"},
    ]


@pytest.mark.parametrize(
    ("item", "instance"),
    [
        (_item(ns="kept"), ME),  # still watched
        (_item(stamp_value="other-ns/other"), ME),  # another installation's
        (_item(stamp_value=None), ME),  # only an older operator reconciled it
        (_item(finalizers=[]), ME),  # nothing to release
        (_item(finalizers=["example.com/keep"]), ME),
        (_item(stamp_value=""), ""),  # no instance: the feature is off
    ],
)
def test_resources_that_are_not_ours_to_release(item: dict[str, Any], instance: str) -> None:
    assert release_patch(item, instance, ["kept"]) == []


def test_only_exact_namespace_names_say_what_is_watched() -> None:
    assert exact_names(["a", "team-b"])
    assert not exact_names([])  # every namespace: nothing unwatched
    assert not exact_names(["a", "team-*"])  # kopf globs cannot be compared by name
    assert not exact_names(["!kube-system"])


class _Kube:
    """The two calls `release_unwatched` makes; the first list answers 429 (a CRD's storage
    re-initialising), one patch is refused (its `test` failed: the resource changed)."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.lists = 0
        self.patched: list[str] = []

    async def list(self, _api: str, kind: str, ns: str, _sel: dict[str, str]) -> Any:
        assert ns == ""  # cluster-wide
        self.lists += 1
        if self.lists == 1:
            raise KubeError(429, "storage is (re)initializing")
        return [i for i in self.items if i["kind"] == kind]

    async def patch_json(self, _api: str, kind: str, ns: str, name: str, ops: Any) -> Any:
        assert [op["op"] for op in ops] == ["test", "remove", "test", "remove"]
        if name == "changed":
            raise KubeError(422, "the test operation failed")
        self.patched.append(f"{kind} {ns}/{name}")
        return {}


async def test_release_retries_a_busy_api_server_and_skips_what_changed() -> None:
    items = [
        {"kind": "LLMGateway", **_item()} | {"metadata": _item()["metadata"] | {"name": "a"}},
        {"kind": "LLMGateway", **_item()} | {"metadata": _item()["metadata"] | {"name": "changed"}},
        {"kind": "CachePolicy", **_item(ns="kept")},
        {"kind": "BatchQueue", **_item(stamp_value="other/x")},
    ]
    kube = _Kube(items)
    released = await release_unwatched(kube, ME, ["kept"])  # type: ignore[arg-type]
    assert released == ["llmgateway gone/a"]
    assert kube.patched == ["LLMGateway gone/a"]
    assert kube.lists == 5  # one retry, then one list per kind
    assert await release_unwatched(kube, ME, ["team-*"]) == []  # type: ignore[arg-type]
