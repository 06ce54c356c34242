"""The operator's registration and small pure helpers (no API server)."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from thrifty_operator import main
from thrifty_operator.builders.defaults import Defaults
from thrifty_operator.collection import collection_body, tenant_index_body
from thrifty_operator.handlers.common import Context
from thrifty_operator.main import build_registry, not_ready
from thrifty_operator.settings import OperatorSettings


def test_registry_builds_without_side_effects() -> None:
    first = build_registry(OperatorSettings(drift_interval_seconds=30))
    second = build_registry(OperatorSettings(drift_interval_seconds=30))
    assert isinstance(first, kopf.OperatorRegistry) and first is not second
    assert first is not kopf.get_default_registry()


def _status(conditions: list[dict[str, str]]) -> kopf.Status:
    return kopf.Body({"status": {"conditions": conditions}}).status


def test_progress_timer_runs_only_until_ready() -> None:
    assert not_ready(status=kopf.Body({}).status) is True
    assert not_ready(status=_status([{"type": "Ready", "status": "False"}])) is True
    assert not_ready(status=_status([{"type": "Ready", "status": "True"}])) is False
    invalid = [{"type": "Ready", "status": "False", "reason": "InvalidSpec"}]
    assert not_ready(status=_status(invalid)) is False


def test_collection_and_tenant_index_requests() -> None:
    assert collection_body(384, laid_out=True)["vectors"] == {"size": 384, "distance": "Cosine"}
    index = tenant_index_body("tenant")
    assert index == {"field_name": "tenant", "field_schema": {"type": "keyword", "is_tenant": True}}


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THRIFTY_OPERATOR_GATEWAY_IMAGE", "registry.local/gw:1")
    monkeypatch.setenv("THRIFTY_OPERATOR_SHARED_ACCESS_MODE", "ReadWriteOnce")
    defaults = OperatorSettings().defaults()
    assert defaults.gateway_image == "registry.local/gw:1"
    assert defaults.shared_access_mode == "ReadWriteOnce"


class _Api:
    closed = False

    async def close(self) -> None:
        self.closed = True


async def test_startup_releases_in_the_background_and_cleanup_stops_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kopf serves the liveness probe only once the startup handlers return: a slow
    cluster-wide release must not hold the operator's start (nor its stop)."""
    api = _Api()
    calls: list[tuple[str, list[str]]] = []

    async def connect() -> _Api:
        return api

    async def release(_kube: object, instance: str, watched: list[str]) -> list[str]:
        calls.append((instance, watched))
        await asyncio.Event().wait()  # an API server that never answers
        return []

    monkeypatch.setattr(main, "connect", connect)
    monkeypatch.setattr(main, "release_unwatched", release)
    memo = kopf.Memo(settings=OperatorSettings(instance="sys/rel"), namespaced=True)
    memo["namespaces"] = ["kept"]
    await asyncio.wait_for(main.startup(settings=kopf.OperatorSettings(), memo=memo), 5)
    task = memo["release"]
    await asyncio.sleep(0)
    assert calls == [("sys/rel", ["kept"])] and not task.done()
    await asyncio.wait_for(main.cleanup(memo=memo), 5)
    assert task.cancelled() and api.closed
    # Without an instance (a hand-run operator) or watching every namespace: nothing to release.
    for settings, namespaces in (
        (OperatorSettings(), ["kept"]),
        (OperatorSettings(instance="a/b"), []),
    ):
        memo = kopf.Memo(settings=settings, namespaced=bool(namespaces), namespaces=namespaces)
        await main.startup(settings=kopf.OperatorSettings(), memo=memo)
        assert "release" not in memo


async def test_an_objects_reconcile_passes_run_one_at_a_time() -> None:
    """kopf runs timers beside the change handlers of the same object: the passes of one
    object never overlap (a pass that read the children before another changed them would
    apply its stale view after), those of two objects do."""
    registry = kopf.OperatorRegistry()
    running: dict[str, int] = {}
    overlaps: list[str] = []

    async def fn(body: Any, _patch: Any, _ix: Any, _ctx: Any, _strict: bool) -> None:
        name = body["metadata"]["name"]
        running[name] = running.get(name, 0) + 1
        if running[name] > 1:
            overlaps.append(name)
        await asyncio.sleep(0.05)
        running[name] -= 1

    main._register_reconcile(registry, "things", fn, OperatorSettings())
    handlers = [*registry._changing.get_all_handlers(), *registry._spawning.get_all_handlers()]
    by_id: dict[str, Any] = {str(h.id): h.fn for h in handlers}
    ctx = Context(object(), Defaults(), OperatorSettings())  # type: ignore[arg-type]

    def call(handler: str, memo: kopf.Memo, name: str) -> Any:
        body = kopf.Body({"metadata": {"name": name}})
        return by_id[handler](body=body, patch=kopf.Patch(), memo=memo)

    one = kopf.Memo(ctx=ctx)
    other = kopf.Memo(ctx=ctx)
    started = asyncio.get_running_loop().time()
    await asyncio.gather(
        call("things-update", one, "a"),
        call("things-drift", one, "a"),
        call("things-progress", one, "a"),
        call("things-update", other, "b"),
    )
    assert overlaps == []
    assert asyncio.get_running_loop().time() - started < 0.05 * 3 + 0.1  # b ran beside a
