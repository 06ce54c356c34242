"""Secret references -> read-only volumes mounted as files (values never enter a ConfigMap)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from thrifty_core.api import BatchQueue, CachePolicy, LLMGateway, SecretKeyRef
from thrifty_core.render import managed_redis_password, qdrant_api_key_ref, redis_password_ref

from .common import short_hash
from .defaults import SECRETS_DIR


def secret_path(ref: SecretKeyRef) -> str:
    """Where a referenced key is mounted: /var/run/thrifty/secrets/<secret>/<key>."""
    return f"{SECRETS_DIR}/{ref.name}/{ref.key}"


def gateway_secret_refs(
    gateway: LLMGateway, policies: Iterable[CachePolicy] = (), queue: BatchQueue | None = None
) -> list[SecretKeyRef]:
    """Every Secret key a gateway (and the cache policies and queue it uses) references,
    including the generated passwords of managed Redis servers and keys of managed Qdrants."""
    spec = gateway.spec
    refs: list[SecretKeyRef | None] = [p.api_key_secret_ref for p in spec.providers]
    refs += [t.api_keys_secret_ref for t in spec.tenants]
    refs += [spec.admin_key_secret_ref, spec.metrics_key_secret_ref]
    for policy in policies:
        refs += [redis_password_ref(policy), qdrant_api_key_ref(policy)]
        embedding = policy.spec.semantic.embedding
        refs.append(embedding.api_key_secret_ref if embedding else None)
    if queue is not None:
        refs.append(managed_redis_password(queue.metadata.name))
    return [r for r in refs if r is not None]


def _volume_name(secret: str) -> str:
    return f"secret-{short_hash(secret, 10)}"


def secret_volumes(
    refs: Iterable[SecretKeyRef],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One volume per Secret (only the referenced keys, mode 0440) and its read-only mount."""
    keys: dict[str, set[str]] = {}
    for ref in refs:
        keys.setdefault(ref.name, set()).add(ref.key)
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for name in sorted(keys):
        vol = _volume_name(name)
        volumes.append(
            {
                "name": vol,
                "secret": {
                    "secretName": name,
                    "defaultMode": 0o440,
                    "items": [{"key": k, "path": k} for k in sorted(keys[name])],
                },
            }
        )
        mounts.append({"name": vol, "mountPath": f"{SECRETS_DIR}/{name}", "readOnly": True})
    return volumes, mounts
