"""Gateway API keys: SHA-256 hashes (from the config or a mounted Secret) -> tenant.

A presented key is hashed and compared with every known hash in constant time
(`hmac.compare_digest`, no early exit), so timing reveals neither which tenant matched nor
how much of a hash did. Keys themselves are never stored or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable

from thrifty_core.config import AdminConfig, GatewayConfig, SecretSource, TenantConfig

log = logging.getLogger(__name__)

ADMIN = "__admin__"
METRICS = "__metrics__"  # a key that may read /metrics and nothing else


def hash_key(key: str) -> str:
    """The SHA-256 hex digest a tenant Secret holds for `key` (`thrifty keys hash`)."""
    return hashlib.sha256(key.encode()).hexdigest()


def _hashes(inline: Iterable[str], source: SecretSource | None) -> list[str]:
    out = [h.strip().lower() for h in inline if h.strip()]
    if source is not None:
        # A key file that is gone (its key removed from the Secret) holds no keys: keeping the
        # old ones would leave a revoked key working for ever. Unreadable or malformed files
        # still keep the previous keys (`reload_if_changed`).
        gone = source.file is not None and not os.path.exists(source.file)
        text = "" if gone else source.read()
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
    """Resolve `Authorization: Bearer <key>` to a tenant (or the admin).

    Key hashes from mounted Secret files are re-read when a file changes (`reload_if_changed`,
    called periodically by the app), so a revoked or rotated key stops or starts working without
    a restart. A file that cannot be read or parsed keeps the previous keys and is logged.
    """

    def __init__(
        self,
        tenants: list[TenantConfig],
        admin: AdminConfig,
        metrics: AdminConfig | None = None,
    ) -> None:
        self._tenant_list = tenants
        self._admin = admin
        self._metrics = metrics or AdminConfig()
        self._tenants = {t.name: t for t in tenants}
        self._entries: list[tuple[bytes, str]] = self._load()
        self._stamps: dict[str, tuple[float, int] | None] = self._file_stamps()

    def _load(self) -> list[tuple[bytes, str]]:
        entries: list[tuple[bytes, str]] = []
        for tenant in self._tenant_list:
            for h in _hashes(tenant.api_key_hashes, tenant.api_keys_file):
                entries.append((bytes.fromhex(h), tenant.name))
        for h in _hashes(self._admin.api_key_hashes, self._admin.api_keys_file):
            entries.append((bytes.fromhex(h), ADMIN))
        for h in _hashes(self._metrics.api_key_hashes, self._metrics.api_keys_file):
            entries.append((bytes.fromhex(h), METRICS))
        owners: dict[bytes, str] = {}
        for digest, owner in entries:
            first = owners.setdefault(digest, owner)
            if first != owner:
                # One key for two owners would act as whichever was listed last (the admin,
                # say): refused, naming the owners (never the hash).
                label = {ADMIN: "admin", METRICS: "metrics"}
                names = sorted({label.get(o, o) for o in (first, owner)})
                raise ValueError(f"one API key hash is listed for both {' and '.join(names)}")
        return entries

    def _files(self) -> list[str]:
        sources = [t.api_keys_file for t in self._tenant_list] + [
            self._admin.api_keys_file,
            self._metrics.api_keys_file,
        ]
        return [s.file for s in sources if s is not None and s.file is not None]

    def _file_stamps(self) -> dict[str, tuple[float, int] | None]:
        stamps: dict[str, tuple[float, int] | None] = {}
        for path in self._files():
            try:
                st = os.stat(path)  # follows the ..data symlink swap of Secret volumes
                stamps[path] = (st.st_mtime, st.st_size)
            except OSError:
                stamps[path] = None
        return stamps

    def reload_if_changed(self) -> bool:
        """Re-read key files whose mtime or size changed; True when the keys were replaced."""
        stamps = self._file_stamps()
        if stamps == self._stamps:
            return False
        try:
            entries = self._load()
        except (LookupError, ValueError) as exc:
            log.warning(
                "gateway key files changed but could not be loaded; keeping old keys: %s", exc
            )
            return False
        self._entries = entries  # one assignment: resolve() sees the old or the new list
        self._stamps = stamps
        log.info("gateway keys reloaded", extra={"keys": len(entries)})
        return True

    @classmethod
    def from_config(cls, config: GatewayConfig) -> KeyStore:
        return cls(config.tenants, config.admin, config.metrics_keys)

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
