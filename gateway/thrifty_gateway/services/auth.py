"""Gateway API keys: SHA-256 hashes (from the config or a mounted Secret) -> tenant.

A presented key is hashed and compared with every known hash in constant time
(`hmac.compare_digest`, no early exit), so timing reveals neither which tenant matched nor
how much of a hash did. Keys themselves are never stored or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable

from thrifty_core.config import AdminConfig, GatewayConfig, SecretSource, TenantConfig

log = logging.getLogger(__name__)

ADMIN = "__admin__"


def hash_key(key: str) -> str:
    """The SHA-256 hex digest a tenant Secret holds for `key` (`thrifty keys hash`)."""
    return hashlib.sha256(key.encode()).hexdigest()


def _hashes(inline: Iterable[str], source: SecretSource | None) -> list[str]:
    out = [h.strip().lower() for h in inline if h.strip()]
    if source is not None:
        text = source.read()
        out.extend(
            line.strip().lower()
            for line in text.splitlines()
            if line.strip() and not line.startswith("#")
        )
    bad = [h for h in out if len(h) != 64 or any(c not in "0123456789abcdef" for c in h)]
    if bad:
        raise ValueError(f"{len(bad)} key hash(es) are not SHA-256 hex digests")
    return out


class KeyStore:
    """Resolve `Authorization: Bearer <key>` to a tenant (or the admin)."""

    def __init__(self, tenants: list[TenantConfig], admin: AdminConfig) -> None:
        self._entries: list[tuple[bytes, str]] = []
        self._tenants = {t.name: t for t in tenants}
        for tenant in tenants:
            for h in _hashes(tenant.api_key_hashes, tenant.api_keys_file):
                self._entries.append((bytes.fromhex(h), tenant.name))
        for h in _hashes(admin.api_key_hashes, admin.api_keys_file):
            self._entries.append((bytes.fromhex(h), ADMIN))

    @classmethod
    def from_config(cls, config: GatewayConfig) -> KeyStore:
        return cls(config.tenants, config.admin)

    def __len__(self) -> int:
        return len(self._entries)

    def resolve(self, key: str) -> str | None:
        """Tenant name (or ADMIN) for `key`; None when unknown. Constant time in the match."""
        digest = hashlib.sha256(key.encode()).digest()
        found: str | None = None
        for stored, owner in self._entries:
            if hmac.compare_digest(stored, digest):
                found = owner
        return found

    def tenant(self, name: str) -> TenantConfig | None:
        return self._tenants.get(name)


def bearer(authorization: str | None, api_key_header: str | None = None) -> str | None:
    """The key from `Authorization: Bearer ...` (or Azure-style `api-key`)."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if api_key_header:
        return api_key_header.strip() or None
    return None
