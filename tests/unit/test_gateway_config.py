"""The rendered gateway config: loading, validation and rendering from custom resources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from thrifty_core.api import BatchQueue, CachePolicy, DistilledModel, LLMGateway
from thrifty_core.config import (
    GatewayConfig,
    LedgerConfig,
    SecretSource,
    TenantConfig,
    dump_config,
    load_config,
    parse_config,
)
from thrifty_core.render import render_gateway_config


def _examples(root: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in ("llmgateway", "cachepolicy", "batchqueue", "distilledmodel"):
        out[name] = yaml.safe_load((root / "examples" / f"{name}.yaml").read_text())
    return out


def test_local_example_loads(repo_root: Path) -> None:
    config = load_config(repo_root / "examples" / "local.yaml")
    assert [r.name for r in config.routes] == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    assert config.route("gpt-4o") is not None
    assert [t.model for t in config.routes[1].targets] == ["gpt-4o", "gpt-4o-mini"]
    assert {t.name for t in config.tenants} == {"team-a", "team-b"}
    assert config.cache_policy_for("gpt-4o-mini") is None or config.default_cache_policy


def test_unknown_provider_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown provider"):
        parse_config(
            {
                "providers": [{"name": "p", "baseUrl": "http://x/v1"}],
                "routes": [{"name": "m", "targets": [{"provider": "q", "model": "m"}]}],
            }
        )


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValidationError):
        parse_config(
            {
                "providers": [{"name": "p", "baseUrl": "http://x/v1", "apiKey": "sk-inline"}],
                "routes": [{"name": "m", "targets": [{"provider": "p", "model": "m"}]}],
            }
        )


def test_secret_source_reads_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THRIFTY_TEST_KEY", "value-from-env\n")
    assert SecretSource(env="THRIFTY_TEST_KEY").read() == "value-from-env"
    path = tmp_path / "key"
    path.write_text("value-from-file\n")
    assert SecretSource(file=str(path)).read() == "value-from-file"
    with pytest.raises(LookupError):
        SecretSource(file=str(tmp_path / "missing")).read()
    with pytest.raises(ValidationError):
        SecretSource(env="A", file="/b")


def test_render_from_examples(repo_root: Path) -> None:
    ex = _examples(repo_root)
    gateway = LLMGateway.model_validate(ex["llmgateway"])
    policy = CachePolicy.model_validate(ex["cachepolicy"])
    queue = BatchQueue.model_validate(ex["batchqueue"])
    student = DistilledModel.model_validate(ex["distilledmodel"])
    config = render_gateway_config(gateway, {policy.metadata.name: policy}, queue, [student])
    assert isinstance(config, GatewayConfig)
    assert config.default_cache_policy == policy.metadata.name
    assert config.providers[0].api_key is not None
    assert config.providers[0].api_key.file == (
        "/var/run/thrifty/secrets/thrifty-provider-keys/simulator"
    )
    for tenant in config.tenants:
        assert tenant.api_keys_file is not None
        assert tenant.api_keys_file.file is not None
        assert tenant.api_keys_file.file.startswith("/var/run/thrifty/secrets/")
        assert not tenant.api_key_hashes
    assert config.batch is not None and config.batch.spec == queue.spec
    assert [s.name for s in config.students] == [student.metadata.name]
    # Rendering is deterministic and round-trips through YAML.
    text = dump_config(config)
    assert text == dump_config(
        render_gateway_config(gateway, {policy.metadata.name: policy}, queue, [student])
    )
    assert parse_config(yaml.safe_load(text)) == config
    # Secret values never appear in the rendered text.
    assert "sk-" not in text


def test_render_reports_missing_policy(repo_root: Path) -> None:
    gateway = LLMGateway.model_validate(_examples(repo_root)["llmgateway"])
    with pytest.raises(KeyError, match="cache policies not found"):
        render_gateway_config(gateway, {}, None, [])


@pytest.mark.parametrize("name", ["anonymous", "admin"])
def test_reserved_tenant_names_are_refused_in_the_gateway_config(name: str) -> None:
    with pytest.raises(ValidationError, match="reserved"):
        TenantConfig(name=name, api_key_hashes=["0" * 64])


def test_several_workers_need_shared_stores() -> None:
    """Each worker process has its own memory: with embedded stores a purge or a usage report
    would reach one worker's entries only."""
    from thrifty_core.config import parse_config, read_config_data

    data = read_config_data(Path(__file__).resolve().parents[2] / "examples" / "local.yaml")
    data["server"]["workers"] = 2
    with pytest.raises(ValueError) as refused:
        parse_config(data)
    message = str(refused.value)
    assert "exact cache of policy 'local'" in message and "ledger" in message
    data["cachePolicies"]["local"]["stores"] = {"redisUrl": "redis://r:6379/0"}
    data["ledger"] = {"redisUrl": "redis://r:6379/1"}
    assert parse_config(data).server.workers == 2
    data["server"]["workers"] = 1
    data.pop("ledger")
    assert parse_config(data).server.workers == 1  # one worker: memory is fine


def test_a_store_credential_with_a_final_newline_is_flagged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis and Qdrant compare the Secret byte for byte; the gateway strips it, so a Secret
    made with `--from-file` (final newline) fails to authenticate: say so, without the value."""
    from thrifty_core.config import SecretSource

    secret = tmp_path / "password"
    secret.write_text("s3cret-value\n")
    source = SecretSource(file=str(secret))
    with caplog.at_level("WARNING"):
        assert source.read() == "s3cret-value"
    assert not caplog.records  # plain reads (provider keys, key lists) stay quiet
    with caplog.at_level("WARNING"):
        assert source.read_store_credential() == "s3cret-value"
    (record,) = caplog.records
    assert str(secret) in record.getMessage() and "--from-literal" in record.getMessage()
    assert "s3cret-value" not in record.getMessage()
    secret.write_text("s3cret-value")
    caplog.clear()
    assert source.read_store_credential() == "s3cret-value"
    assert not caplog.records


@pytest.mark.parametrize("gateway", ["route", "ns/gw:tenant", "NS/gw", "ns/", "/gw", "a/b/c"])
def test_a_ledger_gateway_is_a_namespace_and_a_name(gateway: str) -> None:
    """It goes into usage, budget and rate-limit keys: anything but `namespace/name` could
    read as another key (`route` would make a gateway's keys those of a route's budget)."""
    with pytest.raises(ValidationError, match="gateway"):
        LedgerConfig(gateway=gateway)
    assert LedgerConfig(gateway="team-a/thrifty.v2").gateway == "team-a/thrifty.v2"
