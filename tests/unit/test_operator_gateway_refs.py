"""The LLMGateway handler when a CachePolicy or BatchQueue it references is missing (deleted,
not created yet): the gateway is rendered and applied without it, so its Deployment never
keeps mounting the deleted Secrets and volume (a pod started then, by a drain, an eviction or
a scale-up, could not start), and Ready says what is missing; the ledger stays on a shared
Redis where there is one. An invalid one (its Secrets and stores still there) leaves the
gateway on its last applied config."""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import kopf
import pytest
import yaml

from tests.unit.fake_kube import FakeKube, Key
from tests.unit.test_operator_builders import NS, example
from thrifty_core.config import CONFIG_KEY, GatewayConfig, parse_config
from thrifty_operator.builders import names
from thrifty_operator.builders.defaults import Defaults
from thrifty_operator.conditions import ready
from thrifty_operator.handlers import gateway
from thrifty_operator.handlers.common import Context
from thrifty_operator.handlers.indexes import (
    BATCHQUEUES,
    CACHEPOLICIES,
    DISTILLEDMODELS,
    GATEWAYS,
    GATEWAYS_BY_POLICY,
    GATEWAYS_BY_QUEUE,
    STUDENTS_BY_GATEWAY,
    Indexes,
    gateways_by_policy,
)
from thrifty_operator.settings import OperatorSettings


def indexes(*bodies: dict[str, Any]) -> Indexes:
    stores: dict[str, dict[Key, list[Any]]] = {
        n: {}
        for n in (
            GATEWAYS,
            CACHEPOLICIES,
            BATCHQUEUES,
            DISTILLEDMODELS,
            GATEWAYS_BY_QUEUE,
            GATEWAYS_BY_POLICY,
        )
    }
    stores[STUDENTS_BY_GATEWAY] = {}
    index = {
        "LLMGateway": GATEWAYS,
        "CachePolicy": CACHEPOLICIES,
        "BatchQueue": BATCHQUEUES,
        "DistilledModel": DISTILLEDMODELS,
    }
    for body in bodies:
        key = (NS, body["metadata"]["name"])
        stores[index[body["kind"]]][key] = [body]
        if body["kind"] == "LLMGateway" and body["spec"].get("batchQueueRef"):
            queue = (NS, body["spec"]["batchQueueRef"]["name"])
            stores[GATEWAYS_BY_QUEUE].setdefault(queue, []).append(body["metadata"]["name"])
        if body["kind"] == "LLMGateway":
            for key, name in gateways_by_policy(body["spec"], NS, body["metadata"]["name"]).items():
                stores[GATEWAYS_BY_POLICY].setdefault(key, []).append(name)
    return Indexes(stores)


async def sync(*bodies: dict[str, Any]) -> tuple[FakeKube, dict[str, dict[str, str]]]:
    kube = FakeKube()
    return kube, await sync_on(kube, *bodies)


async def sync_on(kube: FakeKube, *bodies: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One sync over what `kube` holds already; the conditions, and the status fields as
    `fields`."""
    ctx: Any = Context(kube, Defaults(), OperatorSettings())  # type: ignore[arg-type]
    outcome = await gateway.sync(bodies[0], indexes(*bodies), ctx)
    conds = [ready(outcome.conditions), *outcome.conditions]
    out: dict[str, dict[str, Any]] = {
        c.type: {"reason": c.reason, "message": c.message} for c in conds
    }
    out["fields"] = dict(outcome.fields)
    return out


def mounted(kube: FakeKube) -> tuple[set[str], set[str]]:
    """(Secrets, PVCs) the gateway Deployment mounts."""
    deploy = kube.objects[("Deployment", names.gateway("thrifty"))]
    volumes = deploy["spec"]["template"]["spec"]["volumes"]
    secrets = {v["secret"]["secretName"] for v in volumes if "secret" in v}
    claims = {
        v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
    }
    return secrets, claims


def config(kube: FakeKube) -> GatewayConfig:
    cm = kube.objects[("ConfigMap", names.gateway_config("thrifty"))]
    return parse_config(yaml.safe_load(cm["data"][CONFIG_KEY]))


def cached(cfg: GatewayConfig, route: str) -> bool:
    """Whether the gateway caches anything on `route` (the policy that applies to it)."""
    policy = cfg.cache_policy_for(route)
    return policy is not None and (policy.spec.exact.enabled or policy.spec.semantic.enabled)


POLICY_SECRETS = {"default-cache-redis-auth", "default-cache-qdrant-auth"}
QUEUE_SECRET = "default-batch-redis-auth"


async def test_with_every_reference_the_stores_are_mounted() -> None:
    """The baseline the tests below depart from."""
    kube, conds = await sync(example("llmgateway"), example("cachepolicy"), example("batchqueue"))
    secrets, claims = mounted(kube)
    assert POLICY_SECRETS | {QUEUE_SECRET} <= secrets
    assert names.batch_files("default-batch") in claims
    assert conds["ReferencesResolved"]["reason"] == "Resolved"
    assert conds["BatchQueueReady"]["reason"] == "Serving"
    assert ("Deployment", names.batch_worker("default-batch")) in kube.objects


async def test_a_deleted_batch_queue_leaves_the_deployment() -> None:
    kube, conds = await sync(example("llmgateway"), example("cachepolicy"))
    secrets, claims = mounted(kube)
    assert QUEUE_SECRET not in secrets
    assert names.batch_files("default-batch") not in claims
    assert POLICY_SECRETS <= secrets  # the rest is as before
    assert config(kube).batch is None
    assert conds["Ready"]["reason"] == "MissingReference"
    assert "BatchQueue 'default-batch' not found" in conds["Ready"]["message"]
    assert conds["BatchQueueReady"]["reason"] == "MissingReference"
    assert conds["ConfigRendered"]["reason"] == "Rendered"
    assert ("Deployment", names.batch_worker("default-batch")) not in kube.objects


async def test_a_deleted_cache_policy_leaves_the_deployment_and_its_routes_uncached() -> None:
    kube, conds = await sync(example("llmgateway"), example("batchqueue"))
    secrets, _ = mounted(kube)
    assert not POLICY_SECRETS & secrets
    assert QUEUE_SECRET in secrets
    cm = kube.objects[("ConfigMap", names.gateway_config("thrifty"))]
    text = cm["data"][CONFIG_KEY]
    assert "default-cache-redis" not in text and "default-cache-qdrant" not in text
    cfg = config(kube)
    assert not any(cached(cfg, r.name) for r in cfg.routes)
    assert conds["Ready"]["reason"] == "MissingReference"
    message = conds["Ready"]["message"]
    assert "CachePolicy 'default-cache' not found" in message
    assert "gpt-4o-mini" in message  # the routes it applied to
    assert conds["ReferencesResolved"]["reason"] == "MissingReference"


def invalid(body: dict[str, Any]) -> dict[str, Any]:
    """The body with a spec that no longer validates (as an operator upgrade may find it)."""
    body = deepcopy(body)
    if body["kind"] == "CachePolicy":
        body["spec"]["scope"] = "nowhere"
    else:
        body["spec"]["mode"] = "nowhere"
    return body


@pytest.mark.parametrize("kind", ["cachepolicy", "batchqueue"])
async def test_an_invalid_reference_keeps_the_last_applied_config(kind: str) -> None:
    """An invalid policy or queue still has its Secrets, volume and stores: the gateway is not
    rolled to an uncached (or unbatched, unmetered) config and back once it is fixed; it
    stays as it was, and Ready says why."""
    kube = FakeKube()
    bodies = {k: example(k) for k in ("llmgateway", "cachepolicy", "batchqueue")}
    first = await sync_on(kube, *bodies.values())
    before = deepcopy(kube.objects)
    bodies[kind] = invalid(bodies[kind])
    conds = await sync_on(kube, *bodies.values())
    assert kube.objects == before  # Deployment, ConfigMap, worker: untouched
    assert "configHash" not in conds["fields"]  # the status keeps the applied one
    assert first["fields"]["configHash"]
    assert conds["Ready"]["reason"] == "InvalidReference"
    assert "has an invalid spec" in conds["Ready"]["message"]
    assert "stays on its last applied config" in conds["Ready"]["message"]
    assert conds["ConfigRendered"]["reason"] == "InvalidReference"
    if kind == "batchqueue":
        assert conds["BatchQueueReady"]["reason"] == "InvalidReference"
    bodies[kind] = example(kind)  # fixed: the same config again, no roll
    again = await sync_on(kube, *bodies.values())
    assert again["fields"]["configHash"] == first["fields"]["configHash"]
    assert again["Ready"]["reason"] != "InvalidReference"


async def test_an_invalid_reference_deploys_nothing_at_first() -> None:
    kube, conds = await sync(example("llmgateway"), invalid(example("cachepolicy")))
    assert ("Deployment", names.gateway("thrifty")) not in kube.objects
    assert "not deployed until it is fixed" in conds["Ready"]["message"]


async def test_a_missing_default_policy_keeps_the_ledger_shared() -> None:
    """The ledger lives in the default policy's Redis; without that policy it goes to the
    BatchQueue's Redis (mounted anyway), not into each replica's memory (budgets afresh,
    rate limits once per replica)."""
    kube, _ = await sync(example("llmgateway"), example("cachepolicy"), example("batchqueue"))
    assert config(kube).ledger.redis_url is not None
    kube, conds = await sync(example("llmgateway"), example("batchqueue"))
    cfg = config(kube)
    assert cfg.batch is not None
    assert cfg.ledger.redis_url == cfg.batch.redis_url
    assert cfg.ledger.redis_password == cfg.batch.redis_password
    assert cfg.ledger.gateway == f"{NS}/thrifty"  # its keys stay the gateway's own
    assert "ledger" in conds["Ready"]["message"]
    assert "BatchQueue 'default-batch'" in conds["Ready"]["message"]


async def test_a_missing_default_policy_prefers_another_policys_redis() -> None:
    body = example("llmgateway")
    body["spec"]["cachePolicyRef"] = {"name": "gone"}
    body["spec"]["routes"][1]["cachePolicyRef"] = {"name": "default-cache"}
    kube, conds = await sync(body, example("cachepolicy"), example("batchqueue"))
    cfg = config(kube)
    assert cfg.ledger.redis_url == cfg.cache_policies["default-cache"].stores.redis_url
    assert "CachePolicy 'default-cache'" in conds["Ready"]["message"]


async def test_without_any_shared_redis_ready_says_the_ledger_is_per_replica() -> None:
    kube, conds = await sync(example("llmgateway"))
    assert config(kube).ledger.redis_url is None
    assert "each replica on its own" in conds["Ready"]["message"]


async def test_a_routes_own_missing_policy_does_not_fall_back_to_the_default() -> None:
    """A route whose own policy is gone is uncached; the gateway's default policy (another
    scope, other rules) does not take it over."""
    body = example("llmgateway")
    body["spec"]["routes"][1]["cachePolicyRef"] = {"name": "strict"}
    kube, conds = await sync(body, example("cachepolicy"), example("batchqueue"))
    cfg = config(kube)
    strict, other = body["spec"]["routes"][1]["name"], body["spec"]["routes"][0]["name"]
    assert not cached(cfg, strict)
    assert cached(cfg, other)
    assert "CachePolicy 'strict' not found" in conds["Ready"]["message"]
    assert POLICY_SECRETS <= mounted(kube)[0]  # the default policy still serves the others


def deleting(body: dict[str, Any]) -> dict[str, Any]:
    """The body as the API server shows it once deleted, its finalizers still running."""
    body = deepcopy(body)
    body["metadata"]["deletionTimestamp"] = "2026-12-07T10:00:00Z"
    return body


async def test_a_reference_being_deleted_is_left_out_while_its_secrets_remain() -> None:
    """A CachePolicy or BatchQueue being deleted (its finalizers still running) is left out at
    once: the gateway rolls while the Secrets and volume are still there to unmount, instead
    of mounting them until they are gone."""
    kube, conds = await sync(
        example("llmgateway"), deleting(example("cachepolicy")), deleting(example("batchqueue"))
    )
    secrets, claims = mounted(kube)
    assert not (POLICY_SECRETS | {QUEUE_SECRET}) & secrets
    assert names.batch_files("default-batch") not in claims
    assert conds["Ready"]["reason"] == "MissingReference"
    assert "CachePolicy 'default-cache' is being deleted" in conds["Ready"]["message"]


class StatusKube(FakeKube):
    def __init__(self) -> None:
        super().__init__()
        self.statuses: dict[str, dict[str, Any]] = {}

    async def patch_status(
        self, _api: str, _kind: str, _ns: str, name: str, status: dict[str, Any]
    ) -> None:
        self.statuses[name] = status


@pytest.mark.parametrize("kind", ["cachepolicy", "batchqueue"])
async def test_deleting_a_reference_rolls_its_gateways_at_once(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's delete handler of a CachePolicy or BatchQueue re-renders the gateways
    using it (they waited for their drift check, up to a minute, while new pods could not
    mount the deleted Secrets), and never fails the deletion. (Events are recorded here:
    posting needs kopf's running operator, which the e2e tests use.)"""
    from thrifty_operator import main

    events: list[str] = []

    def record(_obj: Any, *, type: str, reason: str, message: str) -> None:
        assert type and message
        events.append(reason)

    monkeypatch.setattr(kopf, "event", record)
    kube = StatusKube()
    bodies = [example("llmgateway"), example("cachepolicy"), example("batchqueue")]
    await sync_on(kube, *bodies)
    assert POLICY_SECRETS | {QUEUE_SECRET} <= mounted(kube)[0]
    going = deleting(example(kind))
    rest = [b if b["kind"] != going["kind"] else going for b in bodies]
    memo = kopf.Memo(ctx=Context(kube, Defaults(), OperatorSettings()))  # type: ignore[arg-type]
    handler = main._policy_deleted if kind == "cachepolicy" else main._queue_deleted
    body = kopf.Body(going)  # type: ignore[arg-type]
    await handler(body=body, memo=memo, **indexes(*rest).stores)
    gone = POLICY_SECRETS if kind == "cachepolicy" else {QUEUE_SECRET}
    assert not gone & mounted(kube)[0]
    assert kube.statuses["thrifty"]["conditions"] and "MissingReference" in events
    # A failure is logged, never raised (it would hold the deletion up).
    await handler(body=body, memo=kopf.Memo(), **indexes(*rest).stores)
