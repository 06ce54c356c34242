"""The price catalog: what a request costs, from its token usage.

Built-in list prices (USD per million tokens, public list prices of late 2025) can be
overridden per gateway (`GatewayConfig.prices`) and per provider (`ProviderConfig.prices`): a
provider's override prices that provider's targets only (a self-hosted `gpt-4o-mini` at $0 leaves
OpenAI's at list price), so a cost is looked up by (provider, model).
Dated snapshots (`gpt-4o-2024-08-06`, `gpt-3.5-turbo-0125`) resolve to their model, and
provider prefixes (`openai/gpt-4o`) are dropped; snapshots priced otherwise are listed by name.
Any other name is its own model: `o3-pro` is not `o3` (it costs ten times more). Unknown models
cost 0 and are reported as such (never guessed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .api.llmgateway import ModelPrice

LEVERS: tuple[str, ...] = ("cache", "batch", "distill", "tier")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float | None = None
    batch_discount: float = 0.5

    @property
    def cached(self) -> float:
        return self.input if self.cached_input is None else self.cached_input

    @classmethod
    def from_model_price(cls, p: ModelPrice) -> Price:
        return cls(
            input=p.input_per_m_tok,
            output=p.output_per_m_tok,
            cached_input=p.cached_input_per_m_tok,
            batch_discount=p.batch_discount,
        )


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one request, as providers report it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


BUILTIN_PRICES: Mapping[str, Price] = {
    "gpt-5": Price(1.25, 10.0, 0.125),
    "gpt-5-mini": Price(0.25, 2.0, 0.025),
    "gpt-5-nano": Price(0.05, 0.40, 0.005),
    "gpt-4.1": Price(2.0, 8.0, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "gpt-4o": Price(2.50, 10.0, 1.25),
    "gpt-4o-2024-05-13": Price(5.0, 15.0),  # the first gpt-4o snapshot, priced higher
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4-turbo": Price(10.0, 30.0),
    "gpt-4": Price(30.0, 60.0),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "o1": Price(15.0, 60.0, 7.50),
    "o1-mini": Price(1.10, 4.40, 0.55),
    "o3": Price(2.0, 8.0, 0.50),
    "o3-mini": Price(1.10, 4.40, 0.55),
    "o4-mini": Price(1.10, 4.40, 0.275),
    "text-embedding-3-small": Price(0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.0),
    "text-embedding-ada-002": Price(0.10, 0.0),
}


def cost_usd(price: Price | None, usage: Usage, *, batch: bool = False) -> float:
    """Cost of `usage` at `price` (cached prompt tokens at the cached rate)."""
    if price is None:
        return 0.0
    uncached = max(usage.prompt_tokens - usage.cached_tokens, 0)
    total = (
        uncached * price.input
        + min(usage.cached_tokens, usage.prompt_tokens) * price.cached
        + usage.completion_tokens * price.output
    ) / 1_000_000
    return total * price.batch_discount if batch else total


# A snapshot date at the end of a model name: -2024-08-06, or -0125 / -0613 (older models).
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


class PriceCatalog:
    """Model name -> price, with overrides layered over the built-in list, and per provider
    the prices that provider overrides (`provider=` in `lookup` and `cost`; None, or a
    provider without overrides, is the gateway-wide catalog)."""

    def __init__(
        self,
        overrides: Iterable[ModelPrice] = (),
        base: Mapping[str, Price] = BUILTIN_PRICES,
        providers: Mapping[str, Iterable[ModelPrice]] | None = None,
    ) -> None:
        self._prices: dict[str, Price] = dict(base)
        for p in overrides:
            self._prices[p.model] = Price.from_model_price(p)
        self._memo: dict[str, Price | None] = {}
        self._providers: dict[str, PriceCatalog] = {
            name: PriceCatalog(own, base=self._prices)
            for name, own in (providers or {}).items()
            if own
        }

    def with_overrides(self, overrides: Iterable[ModelPrice]) -> PriceCatalog:
        """A new catalog with `overrides` on top of this one (for every provider)."""
        return PriceCatalog(overrides, base=self._prices)

    def with_provider(self, provider: str, overrides: Iterable[ModelPrice]) -> PriceCatalog:
        """A new catalog where `provider`'s targets are priced with `overrides` on top of this
        one (other providers keep this catalog's prices)."""
        catalog = PriceCatalog(base=self._prices)
        catalog._providers = {**self._providers, provider: PriceCatalog(overrides, self._prices)}
        return catalog

    def lookup(self, model: str, provider: str | None = None) -> Price | None:
        """The exact name, else without a `provider/` prefix, else without a snapshot date
        (in `provider`'s prices when it overrides any)."""
        if provider is not None:
            own = self._providers.get(provider)
            if own is not None:
                return own.lookup(model)
        if model in self._memo:
            return self._memo[model]
        found = self._prices.get(model)
        if found is None:
            bare = model.rsplit("/", 1)[-1]
            found = self._prices.get(bare) or self._prices.get(_SNAPSHOT.sub("", bare))
        if len(self._memo) < 4096:
            self._memo[model] = found
        return found

    def cost(
        self, model: str, usage: Usage, *, batch: bool = False, provider: str | None = None
    ) -> float:
        """What `usage` of `model` costs at `provider` (None: the gateway-wide price)."""
        return cost_usd(self.lookup(model, provider), usage, batch=batch)

    def models(self) -> list[str]:
        return sorted(self._prices)
