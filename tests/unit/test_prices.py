"""The price catalog."""

from __future__ import annotations

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
