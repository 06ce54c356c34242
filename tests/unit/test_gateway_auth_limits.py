"""Key hashing and resolution, rate-limit buckets."""

from __future__ import annotations

from pathlib import Path

import pytest

from thrifty_core.config import AdminConfig, SecretSource, TenantConfig
from thrifty_core.errors import RateLimitError
from thrifty_gateway.services.auth import ADMIN, METRICS, KeyStore, bearer, hash_key
from thrifty_gateway.services.ratelimit import LocalLimiter, TokenBucket


def test_keys_resolve_to_tenants_from_inline_and_secret_files(tmp_path: Path) -> None:
    secret = tmp_path / "team-b"
    secret.write_text(f"# hashes\n{hash_key('sk-b1')}\n{hash_key('sk-b2')}\n")
    store = KeyStore(
        [
            TenantConfig(name="team-a", api_key_hashes=[hash_key("sk-a")]),
            TenantConfig(name="team-b", api_keys_file=SecretSource(file=str(secret))),
        ],
        AdminConfig(api_key_hashes=[hash_key("sk-admin")]),
    )
    assert len(store) == 4
    assert store.resolve("sk-a") == "team-a"
    assert store.resolve("sk-b2") == "team-b"
    assert store.resolve("sk-admin") == ADMIN
    assert store.resolve("sk-nope") is None
    assert store.resolve(hash_key("sk-a")) is None  # the hash itself is not a key


def test_malformed_hashes_are_refused() -> None:
    with pytest.raises(ValueError, match="not SHA-256"):
        KeyStore([TenantConfig(name="t", api_key_hashes=["sk-plaintext-key"])], AdminConfig())


def test_bearer() -> None:
    assert bearer("Bearer sk-1") == "sk-1"
    assert bearer("bearer   sk-2 ") == "sk-2"
    assert bearer("Basic abc") is None
    assert bearer(None, "sk-azure") == "sk-azure"
    assert bearer(None) is None


def test_token_bucket_refills_per_minute() -> None:
    bucket = TokenBucket(rate_per_min=60, level=60, updated=0.0)
    assert bucket.take(60, 0.0) == 0.0
    assert bucket.take(1, 0.0) == pytest.approx(1.0)
    assert bucket.take(1, 1.0) == 0.0
    bucket.debit(30, 1.0)
    assert bucket.wait_time(1.0) == pytest.approx(31.0)


async def test_limiter_requests_and_tokens() -> None:
    now = [0.0]
    limiter = LocalLimiter(clock=lambda: now[0])
    tenant = TenantConfig(
        name="t", api_key_hashes=[hash_key("k")], requests_per_minute=2, tokens_per_minute=100
    )
    await limiter.check(tenant)
    await limiter.check(tenant)
    with pytest.raises(RateLimitError) as info:
        await limiter.check(tenant)
    assert info.value.headers["retry-after"] == "30"
    now[0] = 60.0
    await limiter.check(tenant)
    await limiter.record_tokens(tenant, 250)
    with pytest.raises(RateLimitError) as tokens:
        await limiter.check(tenant)
    assert tokens.value.code == "tokens_per_minute"
    unlimited = TenantConfig(name="u", api_key_hashes=[hash_key("u")])
    for _ in range(1000):
        await limiter.check(unlimited)


def test_a_metrics_key_resolves_to_the_scraper_and_never_doubles_another_key() -> None:
    store = KeyStore(
        [TenantConfig(name="team-a", api_key_hashes=[hash_key("sk-a")])],
        AdminConfig(api_key_hashes=[hash_key("sk-admin")]),
        AdminConfig(api_key_hashes=[hash_key("sk-scrape")]),
    )
    assert store.resolve("sk-scrape") == METRICS
    with pytest.raises(ValueError, match="admin and metrics"):
        KeyStore(
            [],
            AdminConfig(api_key_hashes=[hash_key("k")]),
            AdminConfig(api_key_hashes=[hash_key("k")]),
        )


def test_the_metrics_key_secret_reaches_the_rendered_config_and_the_pod() -> None:
    from thrifty_core.api import LLMGateway
    from thrifty_core.render import render_gateway_config
    from thrifty_operator.builders.secrets import gateway_secret_refs

    gw = LLMGateway.model_validate(
        {
            "metadata": {"name": "gw", "namespace": "ns"},
            "spec": {
                "providers": [{"name": "p", "baseUrl": "http://p:1/v1"}],
                "routes": [{"name": "m", "targets": [{"provider": "p", "model": "m"}]}],
                "metricsNeedAdminKey": True,
                "metricsKeySecretRef": {"name": "scraper", "key": "hash"},
            },
        }
    )
    config = render_gateway_config(gw, {}, None, [])
    assert config.metrics_keys.api_keys_file is not None
    assert (
        config.metrics_keys.api_keys_file.file
        and "scraper" in config.metrics_keys.api_keys_file.file
    )
    assert ("scraper", "hash") in [(r.name, r.key) for r in gateway_secret_refs(gw)]
