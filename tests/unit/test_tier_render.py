"""Cost control settings travel from the LLMGateway resource into the rendered gateway config
and through its YAML round trip."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from thrifty_core.api.cachepolicy import CachePolicy
from thrifty_core.api.costcontrol import RunningComponent
from thrifty_core.api.llmgateway import LLMGateway
from thrifty_core.config import dump_config, load_config
from thrifty_core.render import render_gateway_config
from thrifty_core.running_cost import component_from_workload


def gateway(**route_extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "thrifty.dev/v1alpha1",
        "kind": "LLMGateway",
        "metadata": {"name": "gw", "namespace": "team"},
        "spec": {
            "providers": [{"name": "openai", "baseUrl": "https://api.openai.com/v1"}],
            "routes": [
                {
                    "name": "chat",
                    "targets": [{"provider": "openai", "model": "gpt-4o"}],
                    "tiering": {
                        "tiers": [
                            {
                                "name": "mini",
                                "targets": [{"provider": "openai", "model": "gpt-4o-mini"}],
                                "rules": [{"maxPromptTokens": 500, "hasTools": False}],
                            }
                        ],
                        "cascade": {"enabled": True, "minMeanLogprob": -0.8},
                    },
                    "hygiene": {"defaultStop": ["\n\nUser:"]},
                    "budget": {"period": "day", "hardLimitUsd": 50},
                    **route_extra,
                }
            ],
            "tenants": [
                {
                    "name": "team-a",
                    "apiKeysSecretRef": {"name": "keys", "key": "team-a"},
                    "budget": {"period": "month", "softLimitUsd": 100, "hardLimitUsd": 120},
                }
            ],
            "netSavings": {
                "cpuHourUsd": 0.03,
                "components": [{"name": "qdrant", "lever": "cache", "cpu": 1, "memoryGib": 2}],
            },
        },
    }


def test_render_carries_tiering_hygiene_budgets_and_prices(tmp_path: Any) -> None:
    cr = LLMGateway.model_validate(gateway())
    config = render_gateway_config(cr, {}, None, [])
    route = config.routes[0]
    assert route.tiering is not None and route.tiering.tiers[0].name == "mini"
    assert route.tiering.cascade.min_mean_logprob == -0.8
    assert route.hygiene is not None and route.hygiene.default_stop == ["\n\nUser:"]
    assert route.budget is not None and route.budget.hard_limit_usd == 50
    assert config.tenants[0].budget is not None and config.tenants[0].budget.soft_limit_usd == 100
    assert config.net_savings is not None and config.net_savings.cpu_hour_usd == 0.03
    path = tmp_path / "gateway.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


def test_tier_targets_must_name_a_provider() -> None:
    bad = gateway()
    bad["spec"]["routes"][0]["tiering"]["tiers"][0]["targets"][0]["provider"] = "nope"
    with pytest.raises(ValidationError, match="tier 'mini' of route 'chat'"):
        LLMGateway.model_validate(bad)


def test_budgets_share_the_default_cache_policys_redis_and_its_password() -> None:
    spec = gateway()
    spec["spec"]["cachePolicyRef"] = {"name": "shared"}
    policy = CachePolicy.model_validate(
        {
            "apiVersion": "thrifty.dev/v1alpha1",
            "kind": "CachePolicy",
            "metadata": {"name": "shared", "namespace": "team"},
            "spec": {
                "stores": {
                    "redis": {
                        "managed": False,
                        "url": "redis://redis.team.svc:6379/0",
                        "passwordSecretRef": {"name": "redis", "key": "password"},
                    }
                }
            },
        }
    )
    config = render_gateway_config(LLMGateway.model_validate(spec), {"shared": policy}, None, [])
    assert config.ledger.redis_url == "redis://redis.team.svc:6379/0"
    assert config.ledger.redis_password is not None
    assert config.ledger.redis_password.file == "/var/run/thrifty/secrets/redis/password"


def test_workloads_the_operator_owns_join_the_declared_components() -> None:
    qdrant = component_from_workload(
        {
            "kind": "StatefulSet",
            "metadata": {
                "name": "shared-qdrant",
                "labels": {"thrifty.dev/owner-kind": "cachepolicy"},
            },
            "spec": {
                "replicas": 1,
                "template": {
                    "spec": {"containers": [{"resources": {"requests": {"cpu": "500m"}}}]}
                },
            },
        }
    )
    assert qdrant is not None
    duplicate = RunningComponent(name="qdrant", lever="cache", cpu=99)
    cr = LLMGateway.model_validate(gateway())
    config = render_gateway_config(cr, {}, None, [], running=[qdrant, duplicate])
    assert config.net_savings is not None
    by_name = {c.name: c for c in config.net_savings.components}
    assert by_name["qdrant"].cpu == 1  # the declared one wins
    assert by_name["shared-qdrant"].cpu == 0.5 and by_name["shared-qdrant"].lever == "cache"
    assert config.net_savings.cpu_hour_usd == 0.03
