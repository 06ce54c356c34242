"""A BatchQueue serves one LLMGateway: the oldest referencing it; the others are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from thrifty_core.api import LLMGateway
from thrifty_operator.handlers import indexes as ix
from thrifty_operator.handlers.gateway import queue_condition

ROOT = Path(__file__).resolve().parents[2]
NS = "shop"


def gateway_body(name: str, created: str | None, queue: str | None = "jobs") -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "llmgateway.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": NS}
    if created:
        body["metadata"]["creationTimestamp"] = created
    if queue:
        body["spec"]["batchQueueRef"] = {"name": queue}
    else:
        body["spec"].pop("batchQueueRef")
    return body


def indexes(*bodies: dict[str, Any]) -> ix.Indexes:
    """The kopf index stores as the operator sees them (key -> values)."""
    stores: dict[str, dict[ix.Key, list[Any]]] = {name: {} for name in ix.BY_KIND.values()}
    stores[ix.GATEWAYS_BY_POLICY], stores[ix.STUDENTS_BY_GATEWAY] = {}, {}
    by_queue: dict[ix.Key, list[Any]] = {}
    for body in bodies:
        name = body["metadata"]["name"]
        stores[ix.GATEWAYS][(NS, name)] = [body]
        for key, value in ix.gateways_by_queue(body["spec"], NS, name).items():
            by_queue.setdefault(key, []).append(value)
    stores[ix.GATEWAYS_BY_QUEUE] = by_queue
    return ix.Indexes(stores)


def test_the_oldest_gateway_holds_the_queue_whatever_the_names() -> None:
    zeta = gateway_body("zeta", "2026-11-27T10:00:00Z")
    alpha = gateway_body("alpha", "2026-11-27T11:00:00Z")  # later, though first by name
    found = indexes(alpha, zeta)
    assert found.gateways_using_queue(NS, "jobs") == ["alpha", "zeta"]
    assert found.queue_holder(NS, "jobs") == "zeta"
    assert found.queue_holder(NS, "other") is None


def test_same_age_or_unknown_age_falls_back_to_the_name() -> None:
    same = "2026-11-27T10:00:00Z"
    assert indexes(gateway_body("b", same), gateway_body("a", same)).queue_holder(NS, "jobs") == "a"
    late_index = indexes(gateway_body("a", None), gateway_body("b", same))
    assert late_index.queue_holder(NS, "jobs") == "b"


def test_a_second_gateway_is_refused_naming_the_holder() -> None:
    zeta = gateway_body("zeta", "2026-11-27T10:00:00Z")
    alpha = gateway_body("alpha", "2026-11-27T11:00:00Z")
    found = indexes(zeta, alpha)
    holder = queue_condition(LLMGateway.model_validate(zeta), found)
    refused = queue_condition(LLMGateway.model_validate(alpha), found)
    assert (holder.type, holder.status, holder.reason) == ("BatchQueueReady", "True", "Serving")
    assert (refused.status, refused.reason) == ("False", "BatchQueueInUse")
    assert "'zeta'" in refused.message and "'jobs'" in refused.message


def test_a_gateway_without_a_queue_is_not_concerned() -> None:
    plain = gateway_body("plain", "2026-11-27T09:00:00Z", queue=None)
    zeta = gateway_body("zeta", "2026-11-27T10:00:00Z")
    found = indexes(plain, zeta)
    assert queue_condition(LLMGateway.model_validate(plain), found).ok
    assert queue_condition(LLMGateway.model_validate(zeta), found).ok
    assert found.queue_holder(NS, "jobs") == "zeta"


def store_body(kind: str, created: str, managed: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, "metadata": {"name": "shared", "namespace": NS}}
    body["metadata"]["creationTimestamp"] = created
    body["spec"] = {"stores": {"redis": {"managed": managed}}} if kind == "CachePolicy" else {}
    return body


def store_indexes(*bodies: dict[str, Any]) -> ix.Indexes:
    stores: dict[str, dict[ix.Key, list[Any]]] = {name: {} for name in ix.BY_KIND.values()}
    for body in bodies:
        stores[ix.BY_KIND[body["kind"]]][(NS, body["metadata"]["name"])] = [body]
    return ix.Indexes(stores)


def test_a_cache_policy_and_a_queue_of_one_name_never_share_a_managed_redis() -> None:
    early, late = "2026-11-27T10:00:00Z", "2026-11-27T11:00:00Z"
    queue_first = store_indexes(store_body("BatchQueue", early), store_body("CachePolicy", late))
    assert queue_first.redis_clash("BatchQueue", NS, "shared") is None
    refused = queue_first.redis_clash("CachePolicy", NS, "shared")
    assert refused is not None
    assert "BatchQueue shared" in refused and "shared-redis" in refused
    assert "stores.redis.managed: false" in refused
    policy_first = store_indexes(store_body("CachePolicy", early), store_body("BatchQueue", late))
    assert policy_first.redis_clash("CachePolicy", NS, "shared") is None
    assert "CachePolicy shared" in (policy_first.redis_clash("BatchQueue", NS, "shared") or "")
    # Same second: the queue keeps it (its stream must never be evicted).
    tie = store_indexes(store_body("CachePolicy", early), store_body("BatchQueue", early))
    assert tie.redis_clash("BatchQueue", NS, "shared") is None
    assert tie.redis_clash("CachePolicy", NS, "shared") is not None
    # A policy on an external Redis runs none: no clash either way.
    external = store_indexes(
        store_body("CachePolicy", late, managed=False), store_body("BatchQueue", early)
    )
    assert external.redis_clash("CachePolicy", NS, "shared") is None
    assert external.redis_clash("BatchQueue", NS, "shared") is None
    assert store_indexes(store_body("BatchQueue", early)).redis_clash("BatchQueue", NS, "x") is None
