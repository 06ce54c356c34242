"""The operator's registration and small pure helpers (no API server)."""

from __future__ import annotations

import asyncio

import kopf
import pytest

from thrifty_operator import main
from thrifty_operator.collection import collection_body, tenant_index_body
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
