"""Managed stores are closed: Redis requires a generated password and Qdrant a generated API key
(Secrets owned by their resource) that gateways, workers and collection Jobs get as files, and
NetworkPolicies admit only them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import yaml

from tests.unit.test_operator_builders import DEFAULTS, MANIFESTS, example, owner, render
from thrifty_core.api import BatchQueue, CachePolicy, LLMGateway
from thrifty_core.config import GatewayConfig, parse_config
from thrifty_operator.builders import cache, names
from thrifty_operator.builders.common import selector_labels
from thrifty_operator.builders.defaults import Defaults
from thrifty_operator.builders.secrets import gateway_secret_refs
from thrifty_operator.builders.stores import build_qdrant_auth_secret, build_redis_auth_secret

SECRETS = "/var/run/thrifty/secrets"
GATEWAY = LLMGateway.model_validate(example("llmgateway"))
QUEUE = BatchQueue.model_validate(example("batchqueue"))


def _config(policy: CachePolicy) -> GatewayConfig:
    """The gateway config the operator renders for the example gateway, queue and `policy`."""
    return parse_config(yaml.safe_load(render(GATEWAY, policy, QUEUE)[0]))


def _by(kind: str, name: str) -> dict[str, Any]:
    return next(m for m in MANIFESTS if m["kind"] == kind and m["metadata"]["name"] == name)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def _mounted(deployment: dict[str, Any]) -> set[str]:
    return {m["mountPath"] for m in _container(deployment)["volumeMounts"]}


def test_managed_redis_requires_its_generated_password() -> None:
    for store in ("default-cache", "default-batch"):
        redis = _container(_by("Deployment", names.redis(store)))
        args = redis["args"]
        assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
        (env,) = [e for e in redis["env"] if e["name"] == "REDIS_PASSWORD"]
        ref = env["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"{store}-redis-auth", "key": "password"}


def test_the_password_secret_is_owned_and_holds_only_the_password() -> None:
    body = example("cachepolicy")
    secret = build_redis_auth_secret(owner(body), "s3cret")
    assert secret["kind"] == "Secret" and secret["type"] == "Opaque"
    assert secret["metadata"]["name"] == "default-cache-redis-auth"
    assert secret["metadata"]["namespace"] == body["metadata"]["namespace"]
    (ref,) = secret["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("CachePolicy", "uid-cachepolicy", True)
    assert secret["stringData"] == {"password": "s3cret"}
    assert build_redis_auth_secret(owner(body), "s3cret") == secret  # the caller picks it


def test_a_users_own_password_secret_wins() -> None:
    body = example("cachepolicy")
    body["spec"]["stores"]["redis"]["passwordSecretRef"] = {"name": "mine", "key": "pw"}
    policy = CachePolicy.model_validate(body)
    assert not cache.generated_password_needed(policy)
    assert cache.generated_password_needed(CachePolicy.model_validate(example("cachepolicy")))
    redis = next(
        m for m in cache.build_stores(policy, owner(body), DEFAULTS) if m["kind"] == "Deployment"
    )
    (env,) = _container(redis)["env"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "pw"}

    text, _ = render(GATEWAY, policy, QUEUE)
    assert f"{SECRETS}/mine/pw" in text and "default-cache-redis-auth" not in text


def test_an_external_redis_gets_no_generated_password() -> None:
    body = example("cachepolicy")
    body["spec"]["stores"]["redis"] = {"managed": False, "url": "redis://redis.example:6379/0"}
    policy = CachePolicy.model_validate(body)
    assert not cache.generated_password_needed(policy)
    config = _config(policy)
    assert config.cache_policies["default-cache"].stores.redis_password is None


def test_gateways_and_workers_read_the_passwords_as_files() -> None:
    policy = CachePolicy.model_validate(example("cachepolicy"))
    config = _config(policy)
    cache_pw = config.cache_policies["default-cache"].stores.redis_password
    assert cache_pw is not None and cache_pw.file == f"{SECRETS}/default-cache-redis-auth/password"
    assert config.batch is not None and config.batch.redis_password is not None
    assert config.batch.redis_password.file == f"{SECRETS}/default-batch-redis-auth/password"
    assert config.ledger.redis_password == cache_pw  # the ledger lives in the cache's Redis
    meta = GATEWAY.metadata
    assert config.ledger.gateway == f"{meta.namespace}/{meta.name}"  # its keys name it
    refs = {(r.name, r.key) for r in gateway_secret_refs(GATEWAY, [policy], QUEUE)}
    assert {("default-cache-redis-auth", "password"), ("default-batch-redis-auth", "password")} <= (
        refs
    )
    for deployment in (
        _by("Deployment", names.gateway("thrifty")),
        _by("Deployment", names.batch_worker("default-batch")),
    ):
        mounted = _mounted(deployment)
        assert f"{SECRETS}/default-cache-redis-auth" in mounted
        assert f"{SECRETS}/default-batch-redis-auth" in mounted


def _pod_labels(kind: str, name: str) -> dict[str, str]:
    labels: dict[str, str] = _by(kind, name)["spec"]["template"]["metadata"]["labels"]
    return labels


def _admits(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    return any(
        all(labels.get(k) == v for k, v in peer["podSelector"]["matchLabels"].items())
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
    )


def test_network_policies_admit_only_gateways_workers_and_collection_jobs() -> None:
    gateway = _pod_labels("Deployment", names.gateway("thrifty"))
    worker = _pod_labels("Deployment", names.batch_worker("default-batch"))
    job = _by("Job", names.collection_delete_job("default-cache"))
    collection = job["spec"]["template"]["metadata"]["labels"]
    student = _pod_labels("Deployment", names.student("summariser"))
    # (Qdrant holds every tenant's cached prompts and answers; a worker never reads it.)
    stores = [
        ("Deployment", names.redis("default-cache"), [6379], False, True),
        ("Deployment", names.redis("default-batch"), [6379], False, True),
        ("StatefulSet", names.qdrant("default-cache"), [6333, 6334], True, False),
    ]
    for kind, name, ports, jobs_too, workers_too in stores:
        policy = _by("NetworkPolicy", name)
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        selected = policy["spec"]["podSelector"]["matchLabels"]
        assert selected == _by(kind, name)["spec"]["selector"]["matchLabels"]
        assert selected.items() <= _pod_labels(kind, name).items()
        (rule,) = policy["spec"]["ingress"]
        assert [p["port"] for p in rule["ports"]] == ports
        assert _admits(policy, gateway)
        assert _admits(policy, worker) is workers_too
        assert _admits(policy, collection) is jobs_too
        assert not _admits(policy, student)
        assert not _admits(policy, {"app": "anything-else"})
        assert policy["metadata"]["ownerReferences"][0]["controller"] is True


def test_store_selectors_are_the_owners_own() -> None:
    """Two policies' stores never share a NetworkPolicy selector."""
    policy = _by("NetworkPolicy", names.redis("default-cache"))
    other = selector_labels(owner({**example("cachepolicy"), "metadata": {"name": "b"}}), "x")
    assert policy["spec"]["podSelector"]["matchLabels"] != other
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == (
        "default-cache"
    )


def test_managed_qdrant_requires_its_generated_api_key() -> None:
    qdrant = _container(_by("StatefulSet", names.qdrant("default-cache")))
    (env,) = [e for e in qdrant["env"] if e["name"] == "QDRANT__SERVICE__API_KEY"]
    assert env["valueFrom"]["secretKeyRef"] == {
        "name": "default-cache-qdrant-auth",
        "key": "api-key",
    }
    # Qdrant exempts exactly these health paths from the key, so the probes keep working.
    assert qdrant["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert qdrant["readinessProbe"]["httpGet"]["path"] == "/readyz"
    secret = build_qdrant_auth_secret(owner(example("cachepolicy")), "k3y")
    assert secret["metadata"]["name"] == "default-cache-qdrant-auth"
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "CachePolicy"
    assert secret["stringData"] == {"api-key": "k3y"}


def test_gateways_and_collection_jobs_read_the_qdrant_key_as_a_file() -> None:
    policy = CachePolicy.model_validate(example("cachepolicy"))
    config = _config(policy)
    key = config.cache_policies["default-cache"].stores.qdrant_api_key
    assert key is not None and key.file == f"{SECRETS}/default-cache-qdrant-auth/api-key"
    assert f"{SECRETS}/default-cache-qdrant-auth" in _mounted(
        _by("Deployment", names.gateway("thrifty"))
    )
    job = _by("Job", names.collection_delete_job("default-cache"))
    args = _container(job)["args"]
    assert args[args.index("--api-key-file") + 1] == f"{SECRETS}/default-cache-qdrant-auth/api-key"
    assert cache.generated_qdrant_key_needed(policy)


def test_no_generated_qdrant_key_for_a_users_key_an_external_qdrant_or_no_semantic_layer() -> None:
    def variant(qdrant: dict[str, Any], semantic: bool = True) -> CachePolicy:
        body = example("cachepolicy")
        body["spec"]["stores"]["qdrant"] = qdrant
        body["spec"]["semantic"]["enabled"] = semantic
        return CachePolicy.model_validate(body)

    mine = variant({"managed": True, "passwordSecretRef": {"name": "mine", "key": "k"}})
    external = variant({"managed": False, "url": "http://qdrant.example:6333"})
    off = variant({"managed": True}, semantic=False)
    for policy in (mine, external, off):
        assert not cache.generated_qdrant_key_needed(policy)

    text, _ = render(GATEWAY, mine, QUEUE)
    assert f"{SECRETS}/mine/k" in text and "default-cache-qdrant-auth" not in text
    for policy in (external, off):
        # Nothing mounts a Secret that nobody creates (the pod would never start).
        refs = {r.name for r in gateway_secret_refs(GATEWAY, [policy], QUEUE)}
        assert "default-cache-qdrant-auth" not in refs
        text, _ = render(GATEWAY, policy, QUEUE)
        assert "default-cache-qdrant-auth" not in text


def test_the_collection_job_is_a_new_job_when_its_pod_template_changes() -> None:
    """A Job's pod template is immutable: an upgrade that adds the API key (or a new operator
    image) must create a new ensure Job, not update the finished one (the API server refuses)."""
    body = example("cachepolicy")
    policy = CachePolicy.model_validate(body)

    def name(p: CachePolicy, defaults: Defaults = DEFAULTS) -> str:
        job = cache.build_collection_job(p, owner(body), defaults)
        assert job is not None
        job_name: str = job["metadata"]["name"]
        return job_name

    assert name(policy) == name(CachePolicy.model_validate(example("cachepolicy")))  # stable
    assert name(policy).startswith("default-cache-collection-")
    assert name(policy, replace(DEFAULTS, operator_image="op:2")) != name(policy)
    body["spec"]["stores"]["qdrant"]["passwordSecretRef"] = {"name": "mine", "key": "k"}
    assert name(CachePolicy.model_validate(body)) != name(policy)


def test_a_completed_collection_job_replaces_the_one_before_it() -> None:
    """Once the Job of the current pod template completes, the one it replaced is deleted: the
    one the status records, else (a policy reconciled before the status had the field) the one
    named by the collection alone."""
    body = example("cachepolicy")
    policy = CachePolicy.model_validate(body)
    job = cache.build_collection_job(policy, owner(body), DEFAULTS)
    assert job is not None
    current = job["metadata"]["name"]
    target = cache.collection(policy)
    assert target is not None
    legacy = f"default-cache-collection-{target.digest[:8]}"
    assert legacy != current
    assert cache.stale_collection_jobs(policy, owner(body), current) == [legacy]
    body["status"] = {"collectionJob": "default-cache-collection-0ld0ld00"}
    recorded = CachePolicy.model_validate(body)
    assert cache.stale_collection_jobs(recorded, owner(body), current) == [
        "default-cache-collection-0ld0ld00"
    ]
    body["status"] = {"collectionJob": current}
    assert cache.stale_collection_jobs(CachePolicy.model_validate(body), owner(body), current) == []


def test_a_remote_embedding_key_is_rendered_as_the_file_the_gateway_mounts() -> None:
    from thrifty_core.render import render_cache_policy

    body = example("cachepolicy")
    body["spec"]["semantic"]["embedding"] = {
        "backend": "openai",
        "model": "text-embedding-3-small",
        "dimensions": 1536,
        "endpoint": "https://api.openai.com/v1",
        "apiKeySecretRef": {"name": "emb", "key": "token"},
    }
    policy = CachePolicy.model_validate(body)
    source = render_cache_policy(policy).stores.embedding_api_key
    assert source is not None and source.file == f"{SECRETS}/emb/token"
    refs = {(r.name, r.key) for r in gateway_secret_refs(GATEWAY, [policy], QUEUE)}
    assert ("emb", "token") in refs
    body["spec"]["semantic"]["enabled"] = False
    off = render_cache_policy(CachePolicy.model_validate(body)).stores.embedding_api_key
    assert off is None
