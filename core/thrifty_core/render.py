"""Render a `GatewayConfig` from an `LLMGateway` and the policies it references.

A pure function the operator calls on every reconcile; the result goes into the gateway's
ConfigMap. Secrets appear only as mount paths (`/var/run/thrifty/secrets/<secret>/<key>`,
`secret_file`): the operator mounts every Secret the gateway references there.

Managed stores get in-cluster Service URLs by convention (`managed_redis_url`,
`managed_qdrant_url`); a policy's `status` URLs win when the operator has already recorded them.
"""

from __future__ import annotations

from collections.abc import Sequence

from .api.base import SecretKeyRef
from .api.batchqueue import BatchQueue
from .api.cachepolicy import CachePolicy, StoreEndpoint
from .api.costcontrol import NetSavings, RunningComponent
from .api.distilledmodel import DistilledModel
from .api.llmgateway import LLMGateway
from .config import (
    AdminConfig,
    BatchConfig,
    CachePolicyConfig,
    CacheStoreConfig,
    GatewayConfig,
    LedgerConfig,
    ProviderConfig,
    RouteConfig,
    ServerConfig,
    StudentConfig,
    TenantConfig,
    secret_file,
)

BATCH_FILES_DIR = "/var/lib/thrifty/batch-files"
CAPTURE_DIR = "/var/lib/thrifty/capture"
STUDENT_ARTIFACTS_DIR = "/var/lib/thrifty/students"


def managed_redis_url(owner: str, namespace: str) -> str:
    """In-cluster URL of the Redis the operator runs for `owner` (a policy or queue name)."""
    return f"redis://{owner}-redis.{namespace}.svc:6379/0"


MANAGED_REDIS_PASSWORD_KEY = "password"


def managed_redis_secret(owner: str) -> str:
    """The Secret with the password the operator generates for the Redis it runs for `owner`."""
    return f"{owner}-redis-auth"


def managed_redis_password(owner: str) -> SecretKeyRef:
    return SecretKeyRef(name=managed_redis_secret(owner), key=MANAGED_REDIS_PASSWORD_KEY)


def _own_or_generated(
    store: StoreEndpoint, generated: SecretKeyRef, runs: bool
) -> SecretKeyRef | None:
    """A store's credential: the user's own Secret key, else the generated one while the
    operator runs the store (`managed` and in use); an external store without a ref has none."""
    if store.password_secret_ref is not None:
        return store.password_secret_ref
    return generated if store.managed and runs else None


def redis_password_ref(policy: CachePolicy) -> SecretKeyRef | None:
    """The policy's Redis password (the exact layer's Redis is always run when managed)."""
    name = policy.metadata.name
    return _own_or_generated(policy.spec.stores.redis, managed_redis_password(name), True)


MANAGED_QDRANT_KEY = "api-key"


def managed_qdrant_secret(policy: str) -> str:
    """The Secret with the API key the operator generates for the Qdrant it runs for `policy`."""
    return f"{policy}-qdrant-auth"


def managed_qdrant_key(policy: str) -> SecretKeyRef:
    """The generated API key of the Qdrant the operator runs for cache policy `policy`."""
    return SecretKeyRef(name=managed_qdrant_secret(policy), key=MANAGED_QDRANT_KEY)


def qdrant_api_key_ref(policy: CachePolicy) -> SecretKeyRef | None:
    """The policy's Qdrant API key (a managed Qdrant runs only while the semantic layer is on)."""
    spec = policy.spec
    generated = managed_qdrant_key(policy.metadata.name)
    return _own_or_generated(spec.stores.qdrant, generated, spec.semantic.enabled)


def managed_qdrant_url(policy: str, namespace: str) -> str:
    """In-cluster URL of the Qdrant the operator runs for cache policy `policy`."""
    return f"http://{policy}-qdrant.{namespace}.svc:6333"


def student_endpoint(model: str, namespace: str) -> str:
    """In-cluster OpenAI-compatible URL of a causal-lm student's serving Deployment."""
    return f"http://{model}-student.{namespace}.svc:8000/v1"


STUDENT_API_KEY = "api-key"


def student_api_key(model: str) -> SecretKeyRef:
    """The API key the operator generates for a causal-lm student's server (vLLM requires it;
    the teacher's gateway sends it)."""
    return SecretKeyRef(name=f"{model}-student-auth", key=STUDENT_API_KEY)


def collection_name(policy: CachePolicy) -> str:
    spec = policy.spec.stores.qdrant.collection
    return spec or f"thrifty-{policy.metadata.namespace}-{policy.metadata.name}"


def render_cache_policy(policy: CachePolicy) -> CachePolicyConfig:
    ns = policy.metadata.namespace
    stores = policy.spec.stores
    status = policy.status
    redis_url = (status.redis_url if status else "") or (
        managed_redis_url(policy.metadata.name, ns) if stores.redis.managed else stores.redis.url
    )
    qdrant_url: str | None = None
    if policy.spec.semantic.enabled:
        qdrant_url = (status.qdrant_url if status else "") or (
            managed_qdrant_url(policy.metadata.name, ns)
            if stores.qdrant.managed
            else stores.qdrant.url
        )
    redis_pw = redis_password_ref(policy)
    qdrant_key = qdrant_api_key_ref(policy)
    embedding = policy.spec.semantic.embedding if policy.spec.semantic.enabled else None
    embedding_key = embedding.api_key_secret_ref if embedding else None
    return CachePolicyConfig(
        spec=policy.spec,
        stores=CacheStoreConfig(
            redis_url=redis_url,
            redis_password=secret_file(redis_pw.name, redis_pw.key) if redis_pw else None,
            qdrant_url=qdrant_url,
            qdrant_api_key=secret_file(qdrant_key.name, qdrant_key.key) if qdrant_key else None,
            embedding_api_key=(
                secret_file(embedding_key.name, embedding_key.key) if embedding_key else None
            ),
            collection=(status.collection if status else "") or collection_name(policy),
            keyspace_version=(status.keyspace_version if status else "") or "v1",
            owner=ns,
        ),
    )


def render_student(model: DistilledModel) -> StudentConfig:
    spec = model.spec
    ns = model.metadata.namespace
    name = model.metadata.name
    status = model.status
    # The operator decides what serves: a pin it saw pass (status.passedVersions), else the
    # active version; none at all (nothing passed yet, or the serving version failed a new
    # gate) serves nothing, rather than whatever promoted version the volume still holds.
    passed = status.passed_versions if status else []
    pin = spec.serving.version if spec.serving.version in passed else ""
    version = pin or (status.active_version if status else "")
    is_lm = spec.student.kind == "causal-lm"
    key = student_api_key(name)
    return StudentConfig(
        route=spec.teacher.route,
        name=name,
        kind=spec.student.kind,
        mode=spec.routing.mode,
        confidence_threshold=spec.routing.confidence_threshold,
        canary_percent=spec.routing.canary_percent,
        evaluation_sample_rate=spec.routing.evaluation_sample_rate,
        timeout_seconds=spec.routing.timeout_ms / 1000,
        labels=list(spec.student.labels),
        artifact_path=None if is_lm else f"{STUDENT_ARTIFACTS_DIR}/{name}",
        endpoint=((status.endpoint if status else "") or student_endpoint(name, ns))
        if is_lm
        else None,
        served_model=name if is_lm else None,
        api_key=secret_file(key.name, key.key) if is_lm else None,
        version=version or None,
        serve=bool(version),
        cost_per_hour=spec.serving.cost_per_hour,
        capture=spec.capture,
        capture_dir=f"{CAPTURE_DIR}/{name}",
    )


def net_savings_with(
    declared: NetSavings | None, running: Sequence[RunningComponent]
) -> NetSavings | None:
    """The declared running-cost settings plus the workloads the operator found it owns
    (`running_cost.component_from_workload`); a declared component with the same name wins."""
    if not running:
        return declared
    base = declared or NetSavings()
    named = {c.name for c in base.components}
    extra = sorted((c for c in running if c.name not in named), key=lambda c: c.name)
    return base.model_copy(update={"components": [*base.components, *extra]})


def render_gateway_config(
    gateway: LLMGateway,
    cache_policies: dict[str, CachePolicy],
    batch_queue: BatchQueue | None,
    distilled: list[DistilledModel],
    running: Sequence[RunningComponent] = (),
) -> GatewayConfig:
    """The config a gateway pod runs with. Pure: no I/O, no clock, deterministic output.

    `cache_policies` maps policy names to the CachePolicy objects the gateway references (the
    gateway-wide ref and per-route refs); missing ones raise `KeyError` so the caller can report
    them in a condition. Only students whose teacher is this gateway are included.
    `running` are Thrifty workloads the operator owns (for net savings), added to
    `spec.netSavings.components`.
    """
    spec = gateway.spec
    ns = gateway.metadata.namespace
    referenced = {r.cache_policy_ref.name for r in spec.routes if r.cache_policy_ref}
    if spec.cache_policy_ref:
        referenced.add(spec.cache_policy_ref.name)
    missing = sorted(referenced - cache_policies.keys())
    if missing:
        raise KeyError(f"cache policies not found: {', '.join(missing)}")

    providers = [
        ProviderConfig(
            name=p.name,
            type=p.type,
            base_url=p.base_url,
            api_key=secret_file(p.api_key_secret_ref.name, p.api_key_secret_ref.key)
            if p.api_key_secret_ref
            else None,
            api_version=p.api_version,
            max_connections=p.max_connections,
            supports_batch=p.supports_batch,
            prices=list(p.prices),
        )
        for p in spec.providers
    ]
    routes = [
        RouteConfig(
            name=r.name,
            targets=list(r.targets),
            timeout_seconds=r.timeout_seconds,
            max_retries=r.max_retries,
            open=r.open,
            deferrable=r.deferrable,
            cache_policy=r.cache_policy_ref.name if r.cache_policy_ref else None,
            max_tokens_ceiling=r.max_tokens_ceiling,
            tiering=r.tiering,
            hygiene=r.hygiene,
            budget=r.budget,
        )
        for r in spec.routes
    ]
    tenants = [
        TenantConfig(
            name=t.name,
            api_keys_file=secret_file(t.api_keys_secret_ref.name, t.api_keys_secret_ref.key),
            requests_per_minute=t.requests_per_minute,
            tokens_per_minute=t.tokens_per_minute,
            budget=t.budget,
        )
        for t in spec.tenants
    ]
    admin = AdminConfig(
        api_keys_file=secret_file(spec.admin_key_secret_ref.name, spec.admin_key_secret_ref.key)
        if spec.admin_key_secret_ref
        else None
    )
    metrics_ref = spec.metrics_key_secret_ref
    metrics_keys = AdminConfig(
        api_keys_file=secret_file(metrics_ref.name, metrics_ref.key) if metrics_ref else None
    )
    batch = None
    if batch_queue is not None:
        batch = BatchConfig(
            name=batch_queue.metadata.name,
            spec=batch_queue.spec,
            redis_url=managed_redis_url(batch_queue.metadata.name, ns),
            redis_password=secret_file(
                managed_redis_secret(batch_queue.metadata.name), MANAGED_REDIS_PASSWORD_KEY
            ),
            files_dir=BATCH_FILES_DIR,
        )
    students = [
        render_student(m)
        for m in sorted(distilled, key=lambda m: m.metadata.name)
        if m.spec.teacher.gateway_ref.name == gateway.metadata.name
    ]
    default_policy = spec.cache_policy_ref.name if spec.cache_policy_ref else None
    rendered_policies = {
        name: render_cache_policy(cache_policies[name]) for name in sorted(referenced)
    }
    ledger_redis = (
        rendered_policies[default_policy].stores.redis_url
        if default_policy
        else (batch.redis_url if batch else None)
    )
    ledger_password = (
        rendered_policies[default_policy].stores.redis_password
        if default_policy
        else (batch.redis_password if batch else None)
    )
    return GatewayConfig(
        server=ServerConfig(
            host="0.0.0.0",
            port=8080,
            max_request_bytes=spec.max_request_bytes,
            log_format="json",
            metrics_need_admin_key=spec.metrics_need_admin_key,
        ),
        providers=providers,
        routes=routes,
        tenants=tenants,
        admin=admin,
        metrics_keys=metrics_keys,
        cache_policies=rendered_policies,
        default_cache_policy=default_policy,
        batch=batch,
        students=students,
        ledger=LedgerConfig(
            redis_url=ledger_redis,
            redis_password=ledger_password,
            gateway=f"{gateway.metadata.namespace}/{gateway.metadata.name}",
        ),
        net_savings=net_savings_with(spec.net_savings, running),
    )
