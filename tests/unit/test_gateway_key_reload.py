"""Gateway keys from mounted Secret files follow rotation and revocation without a restart."""

from __future__ import annotations

import os
from pathlib import Path

from thrifty_core.config import AdminConfig, SecretSource, TenantConfig
from thrifty_gateway.services.auth import ADMIN, KeyStore, hash_key


def _write(path: Path, *keys: str, bump: int = 0) -> None:
    path.write_text("".join(hash_key(k) + "\n" for k in keys))
    stamp = path.stat().st_mtime + bump
    os.utime(path, (stamp, stamp))


def _store(tenant_file: Path, admin_file: Path) -> KeyStore:
    tenant = TenantConfig(name="team-a", api_keys_file=SecretSource(file=str(tenant_file)))
    admin = AdminConfig(api_keys_file=SecretSource(file=str(admin_file)))
    return KeyStore([tenant], admin)


def test_rotated_and_revoked_keys_follow_the_file(tmp_path: Path) -> None:
    tenant_file, admin_file = tmp_path / "team-a", tmp_path / "admin"
    _write(tenant_file, "sk-old")
    _write(admin_file, "sk-admin")
    keys = _store(tenant_file, admin_file)
    assert keys.resolve("sk-old") == "team-a"
    assert keys.resolve("sk-admin") == ADMIN
    assert keys.reload_if_changed() is False

    _write(tenant_file, "sk-new", bump=5)
    assert keys.reload_if_changed() is True
    assert keys.resolve("sk-old") is None
    assert keys.resolve("sk-new") == "team-a"
    assert keys.resolve("sk-admin") == ADMIN


def test_a_broken_file_keeps_the_previous_keys(tmp_path: Path) -> None:
    tenant_file, admin_file = tmp_path / "team-a", tmp_path / "admin"
    _write(tenant_file, "sk-a")
    _write(admin_file, "sk-admin")
    keys = _store(tenant_file, admin_file)
    tenant_file.write_text("not-a-hash\n")
    stamp = tenant_file.stat().st_mtime + 5
    os.utime(tenant_file, (stamp, stamp))
    assert keys.reload_if_changed() is False
    assert keys.resolve("sk-a") == "team-a"
    # A file that is gone is its key removed from the Secret: no keys left, not the old ones
    # (which would keep a revoked key working for ever).
    tenant_file.unlink()
    assert keys.reload_if_changed() is True
    assert keys.resolve("sk-a") is None
    assert keys.resolve("sk-admin") == ADMIN


def test_one_key_for_two_owners_is_refused(tmp_path: Path) -> None:
    """The same hash for a tenant and the admin (or two tenants) would act as whichever came
    last: refused at start, and a reload that would bring it keeps the previous keys."""
    import pytest

    tenant_file, admin_file = tmp_path / "team-a", tmp_path / "admin"
    _write(tenant_file, "sk-shared")
    _write(admin_file, "sk-shared")
    with pytest.raises(ValueError, match="admin and team-a"):
        _store(tenant_file, admin_file)
    _write(admin_file, "sk-admin", bump=5)
    keys = _store(tenant_file, admin_file)
    _write(admin_file, "sk-shared", bump=10)
    assert keys.reload_if_changed() is False
    assert keys.resolve("sk-shared") == "team-a" and keys.resolve("sk-admin") == ADMIN
