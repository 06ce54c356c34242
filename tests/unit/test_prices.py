"""The price catalog."""

from __future__ import annotations

from typing import Any

import pytest

from thrifty_core.api.llmgateway import ModelPrice
from thrifty_core.prices import PriceCatalog, Usage, cost_usd


def test_known_model_cost() -> None:
    catalog = PriceCatalog()
    cost = catalog.cost("gpt-4o-mini", Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000))
    assert cost == pytest.approx(0.15 + 0.60)


def test_dated_and_prefixed_names_resolve() -> None:
    catalog = PriceCatalog()
    assert catalog.lookup("gpt-4o-mini-2024-07-18") == catalog.lookup("gpt-4o-mini")
    assert catalog.lookup("gpt-4o-2024-08-06") == catalog.lookup("gpt-4o")
    assert catalog.lookup("openai/gpt-4o") == catalog.lookup("gpt-4o")
    assert catalog.lookup("no-such-model") is None
    assert catalog.cost("no-such-model", Usage(10, 10)) == 0.0
    assert catalog.lookup("gpt-3.5-turbo-0125") == catalog.lookup("gpt-3.5-turbo")
    assert catalog.lookup("openai/gpt-4o-mini-2024-07-18") == catalog.lookup("gpt-4o-mini")


def test_a_longer_name_is_another_model_not_a_cheaper_guess() -> None:
    """`o3-pro` costs ten times `o3`, `gpt-5-pro` twelve times `gpt-5`: a name that only
    starts like a known model is unknown (cost 0, reported), never priced as that model."""
    catalog = PriceCatalog()
    for name in ("o3-pro", "o1-pro", "gpt-5-pro", "o3-deep-research", "gpt-4o-audio-preview"):
        assert catalog.lookup(name) is None, name
    first = catalog.lookup("gpt-4o-2024-05-13")  # the first gpt-4o snapshot was dearer
    assert first is not None and first.input == 5.0 and first.output == 15.0


def test_cached_and_batch_prices() -> None:
    catalog = PriceCatalog()
    price = catalog.lookup("gpt-4o")
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=0, cached_tokens=500_000)
    assert cost_usd(price, usage) == pytest.approx(0.5 * 2.5 + 0.5 * 1.25)
    full = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert catalog.cost("gpt-4o", full, batch=True) == pytest.approx((2.5 + 10.0) / 2)


def test_overrides_win() -> None:
    catalog = PriceCatalog().with_overrides(
        [ModelPrice(model="gpt-4o", input_per_m_tok=1.0, output_per_m_tok=2.0)]
    )
    assert catalog.cost("gpt-4o", Usage(1_000_000, 1_000_000)) == pytest.approx(3.0)
    assert catalog.cost("gpt-4o-mini", Usage(1_000_000, 0)) == pytest.approx(0.15)


def test_the_gateway_names_route_models_it_has_no_price_for() -> None:
    from thrifty_core.config import parse_config
    from thrifty_gateway.state import build_catalog, unpriced_models

    config = parse_config(
        {
            "providers": [{"name": "p", "baseUrl": "http://x/v1"}],
            "routes": [
                {"name": "a", "targets": [{"provider": "p", "model": "gpt-4o-prod"}]},
                {"name": "b", "targets": [{"provider": "p", "model": "gpt-4o-2024-08-06"}]},
            ],
        }
    )
    assert unpriced_models(config, build_catalog(config)) == ["gpt-4o-prod"]


def test_a_providers_override_prices_that_providers_targets_only() -> None:
    """A self-hosted `gpt-4o-mini` declared at $0 leaves OpenAI's at its list price, whatever
    order the providers are listed in; no provider (or one without overrides) is the
    gateway-wide price."""
    from thrifty_core.config import parse_config
    from thrifty_gateway.state import build_catalog

    free = [{"model": "gpt-4o-mini", "inputPerMTok": 0, "outputPerMTok": 0}]
    openai: dict[str, Any] = {"name": "openai", "baseUrl": "http://o/v1"}
    vllm: dict[str, Any] = {"name": "vllm", "baseUrl": "http://v/v1", "prices": free}
    for providers in ([openai, vllm], [vllm, openai]):
        config = parse_config(
            {
                "providers": providers,
                "prices": [{"model": "gpt-4o", "inputPerMTok": 2.0, "outputPerMTok": 8.0}],
                "routes": [{"name": "a", "targets": [{"provider": "openai", "model": "gpt-4o"}]}],
            }
        )
        catalog = build_catalog(config)
        full = Usage(1_000_000, 1_000_000)
        assert catalog.cost("gpt-4o-mini", full, provider="openai") == pytest.approx(0.75)
        assert catalog.cost("gpt-4o-mini", full) == pytest.approx(0.75)
        assert catalog.cost("gpt-4o-mini", full, provider="vllm") == 0.0
        # the gateway-wide override holds at every provider, the provider's own on top
        assert catalog.cost("gpt-4o", full, provider="vllm") == pytest.approx(10.0)
        assert catalog.cost("gpt-4o", full, provider="openai") == pytest.approx(10.0)
        assert catalog.cost("gpt-4o", full, provider="unknown") == pytest.approx(10.0)


def test_with_provider_layers_one_providers_prices() -> None:
    catalog = PriceCatalog().with_provider(
        "azure", [ModelPrice(model="gpt-4o", input_per_m_tok=1.0, output_per_m_tok=2.0)]
    )
    assert catalog.cost("gpt-4o", Usage(1_000_000, 1_000_000), provider="azure") == 3.0
    assert catalog.cost("gpt-4o", Usage(1_000_000, 1_000_000)) == pytest.approx(12.5)
    assert catalog.lookup("gpt-4o-mini", "azure") == catalog.lookup("gpt-4o-mini")


def test_a_model_priced_by_its_provider_is_not_reported_unpriced() -> None:
    from thrifty_core.config import parse_config
    from thrifty_gateway.state import build_catalog, unpriced_models

    config = parse_config(
        {
            "providers": [
                {"name": "openai", "baseUrl": "http://o/v1"},
                {
                    "name": "vllm",
                    "baseUrl": "http://v/v1",
                    "prices": [{"model": "llama-3-8b", "inputPerMTok": 0.1, "outputPerMTok": 0.1}],
                },
            ],
            "routes": [
                {"name": "a", "targets": [{"provider": "vllm", "model": "llama-3-8b"}]},
                {"name": "b", "targets": [{"provider": "openai", "model": "llama-3-8b"}]},
            ],
        }
    )
    # priced at vllm only: OpenAI's target of the same name has no price
    assert unpriced_models(config, build_catalog(config)) == ["llama-3-8b"]
    config.routes.pop()
    assert unpriced_models(config, build_catalog(config)) == []
