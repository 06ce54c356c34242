"""API types: every example parses, invalid values are refused with a message naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from thrifty_core.api import BY_KIND, CachePolicy, DistilledModel, LLMGateway

ROOT = Path(__file__).resolve().parents[2]


def _example_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion") == "thrifty.dev/v1alpha1":
                docs.append((f"{path.name}:{doc['kind']}", doc))
    return docs


EXAMPLES = _example_docs()


def test_examples_cover_every_kind() -> None:
    assert {doc["kind"] for _, doc in EXAMPLES} == set(BY_KIND)


@pytest.mark.parametrize(("name", "doc"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_example_parses(name: str, doc: dict[str, Any]) -> None:
    resource = BY_KIND[doc["kind"]].parse_object(doc)
    assert resource.metadata.name == doc["metadata"]["name"], name


def _gateway(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "providers": [{"name": "p", "baseUrl": "http://sim:9100/v1"}],
        "routes": [{"name": "m", "targets": [{"provider": "p", "model": "m"}]}],
    }
    base.update(spec)
    return {"apiVersion": "thrifty.dev/v1alpha1", "kind": "LLMGateway", "spec": base}


def _error_text(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return str(exc.value)


def test_minimal_gateway_gets_defaults() -> None:
    gw = LLMGateway.model_validate(_gateway())
    assert gw.spec.replicas == 2
    assert gw.spec.routes[0].timeout_seconds == 60
    assert gw.spec.max_request_bytes == 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"replicas": -1}, "replicas"),
        ({"providers": [{"name": "Bad_Name", "baseUrl": "http://x"}]}, "name"),
        ({"providers": [{"name": "p", "baseUrl": "ftp://x"}]}, "baseUrl"),
        ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "minReplicas"),
        ({"autoscaling": {"enabled": True}}, "resources.requests.cpu"),
        ({"routes": [{"name": "m", "targets": []}]}, "targets"),
        ({"routes": [{"name": "m", "targets": [{"provider": "nope", "model": "m"}]}]}, "nope"),
        ({"apiKey": "sk-inline"}, "apiKey"),
    ],
)
def test_invalid_gateway_rejected_with_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        LLMGateway.model_validate(_gateway(**spec))
    assert field in _error_text(exc)


PDB = "podDisruptionBudget.minAvailable must be below replicas"
CPU = {"resources": {"requests": {"cpu": "100m"}}}


@pytest.mark.parametrize(
    "spec",
    [
        {"replicas": 1, "podDisruptionBudget": {"enabled": True, "minAvailable": 1}},
        {"replicas": 1, "podDisruptionBudget": {"enabled": True}},  # minAvailable defaults to 1
        {"replicas": 2, "podDisruptionBudget": {"enabled": True, "minAvailable": 3}},
        {
            **CPU,
            "replicas": 5,  # ignored with autoscaling: the HPA may go down to minReplicas
            "autoscaling": {"enabled": True, "minReplicas": 2},
            "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
        },
    ],
)
def test_a_disruption_budget_that_blocks_every_drain_is_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as exc:
        LLMGateway.model_validate(_gateway(**spec))
    assert PDB in _error_text(exc)


@pytest.mark.parametrize(
    "spec",
    [
        {"replicas": 2, "podDisruptionBudget": {"enabled": True, "minAvailable": 1}},
        {"replicas": 1, "podDisruptionBudget": {"enabled": True, "minAvailable": 0}},
        {"replicas": 0, "podDisruptionBudget": {"enabled": True, "minAvailable": 1}},
        {"replicas": 1, "podDisruptionBudget": {"enabled": False, "minAvailable": 1}},
        {"replicas": 1},  # the budget is off by default
        {
            **CPU,
            "replicas": 1,
            "autoscaling": {"enabled": True, "minReplicas": 3},
            "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
        },
    ],
)
def test_a_disruption_budget_that_lets_a_pod_go_is_accepted(spec: dict[str, Any]) -> None:
    LLMGateway.model_validate(_gateway(**spec))


def test_the_disruption_budget_rule_is_enforced_by_the_api_server_too() -> None:
    """The same rule as a CEL rule on the spec, naming the field (tests/e2e/test_crds.py runs
    it on the API server)."""
    from thrifty_core.api.llmgateway import PDB_RULE

    schema = LLMGateway.model_json_schema(by_alias=True)
    rules = schema["$defs"]["LLMGatewaySpec"]["x-kubernetes-validations"]
    [rule] = [r for r in rules if r["rule"] == PDB_RULE]
    assert rule["fieldPath"] == ".podDisruptionBudget.minAvailable"
    assert rule["message"].startswith(PDB)


def test_provider_keys_are_secret_refs_only() -> None:
    doc = _gateway(providers=[{"name": "p", "baseUrl": "http://x", "apiKey": "sk-123"}])
    with pytest.raises(ValidationError) as exc:
        LLMGateway.model_validate(doc)
    assert "apiKey" in _error_text(exc)


def test_semantic_layer_needs_embedding() -> None:
    doc = {"kind": "CachePolicy", "spec": {"semantic": {"enabled": True}}}
    with pytest.raises(ValidationError) as exc:
        CachePolicy.model_validate(doc)
    assert "embedding" in _error_text(exc)


def test_threshold_out_of_range() -> None:
    doc = {
        "kind": "CachePolicy",
        "spec": {"semantic": {"enabled": True, "threshold": 1.5, "embedding": {}}},
    }
    with pytest.raises(ValidationError) as exc:
        CachePolicy.model_validate(doc)
    assert "threshold" in _error_text(exc)


@pytest.mark.parametrize(
    ("verifier", "field"),
    [({"minScore": 1.2}, "minScore"), ({"model": "gpt-judge"}, "model")],
)
def test_bad_pair_verifier_is_refused(verifier: dict[str, Any], field: str) -> None:
    doc = {
        "kind": "CachePolicy",
        "spec": {"semantic": {"enabled": True, "embedding": {}, "guard": {"verifier": verifier}}},
    }
    with pytest.raises(ValidationError) as exc:
        CachePolicy.model_validate(doc)
    assert field in _error_text(exc)


def test_causal_lm_needs_base_model() -> None:
    doc = {
        "kind": "DistilledModel",
        "spec": {
            "teacher": {"gatewayRef": {"name": "gw"}, "route": "r"},
            "student": {"kind": "causal-lm"},
        },
    }
    with pytest.raises(ValidationError) as exc:
        DistilledModel.model_validate(doc)
    assert "baseModel" in _error_text(exc)


def test_round_trip_uses_camel_case() -> None:
    gw = LLMGateway.model_validate(_gateway())
    dumped = gw.model_dump(by_alias=True, exclude_none=True)
    assert "maxRequestBytes" in dumped["spec"]
    assert LLMGateway.model_validate(dumped) == gw


@pytest.mark.parametrize("name", ["anonymous", "admin"])
def test_reserved_tenant_names_are_refused(name: str) -> None:
    tenant = {"name": name, "apiKeysSecretRef": {"name": "keys", "key": name}}
    with pytest.raises(ValidationError) as exc:
        LLMGateway.model_validate(_gateway(tenants=[tenant]))
    assert "reserved" in _error_text(exc)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:secret@redis:6379/0",
        "redis://user:secret@redis/0",
        "rediss://a@b",
        "redis://redis:6379/0?password=secret",  # redis-py reads it from the query
        "redis://redis:6379?password=secret",
    ],
)
def test_store_urls_carry_no_credentials(url: str) -> None:
    doc = {"kind": "CachePolicy", "spec": {"stores": {"redis": {"managed": False, "url": url}}}}
    with pytest.raises(ValidationError) as exc:
        CachePolicy.model_validate(doc)
    assert "url" in _error_text(exc)


def test_store_url_without_credentials_is_accepted() -> None:
    doc = {
        "kind": "CachePolicy",
        "spec": {"stores": {"redis": {"managed": False, "url": "redis://redis.db:6379/2"}}},
    }
    assert CachePolicy.model_validate(doc).spec.stores.redis.url == "redis://redis.db:6379/2"


def test_provider_url_carries_no_credentials() -> None:
    doc = _gateway(providers=[{"name": "p", "baseUrl": "https://user:pw@api.example.com/v1"}])
    with pytest.raises(ValidationError) as exc:
        LLMGateway.model_validate(doc)
    assert "baseUrl" in _error_text(exc)


@pytest.mark.parametrize(
    "url",
    [
        "http://sim:9100/v1?api_key=sk-live-123",  # copied into the gateway's ConfigMap
        "https://api.example.com/v1?key=x",
        "https://api.example.com/v1#token=x",
    ],
)
def test_provider_and_qdrant_urls_carry_no_query_string(url: str) -> None:
    with pytest.raises(ValidationError) as exc:
        LLMGateway.model_validate(_gateway(providers=[{"name": "p", "baseUrl": url}]))
    assert "baseUrl" in _error_text(exc)
    doc = {"kind": "CachePolicy", "spec": {"stores": {"qdrant": {"managed": False, "url": url}}}}
    with pytest.raises(ValidationError):
        CachePolicy.model_validate(doc)


@pytest.mark.parametrize("size", ["-1Gi", "1..5Gi", "+1Gi", "Gi", "1GB", "1 Gi"])
def test_store_sizes_are_quantities_that_are_not_negative(size: str) -> None:
    """A size the API server's old pattern let through ("-1Gi", "1..5Gi"): the child's apply
    then failed half-way (a partial apply; for "1..5Gi" a 500, retried for ever)."""
    doc = {"kind": "CachePolicy", "spec": {"stores": {"redis": {"storage": size}}}}
    with pytest.raises(ValidationError):
        CachePolicy.model_validate(doc)


@pytest.mark.parametrize("size", ["1Gi", "500Mi", "1.5Gi", "2", "100M", "1e3"])
def test_store_sizes_as_kubernetes_writes_them_are_accepted(size: str) -> None:
    doc = {"kind": "CachePolicy", "spec": {"stores": {"redis": {"storage": size}}}}
    assert CachePolicy.model_validate(doc).spec.stores.redis.storage == size
