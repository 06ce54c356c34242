"""The tier decision a request carries from the tiering stage to the cache and the ledger.

The tiering stage decides before the cache looks up (`ctx.state[DECISION_KEY]`), so that the
cache keys an answer by the model of the tier that was chosen (`TierDecision.target`), never by
the route's own model: answers of different tiers never share an entry.
"""

from __future__ import annotations

from dataclasses import dataclass

DECISION_KEY = "tier_decision"  # ctx.state key: the TierDecision (read by the cache)
TIER_KEY = "tier"  # ctx.state key: the tier that answered (read by the ledger)
DOWNGRADE_KEY = "budget_downgrade"  # ctx.state key set by the budget stage (soft limit)


@dataclass(slots=True)
class TierDecision:
    """Which tier a request goes to, and what became of it."""

    tier: str  # name of the chosen tier ("route" for the route's own targets)
    index: int  # its index in the plan, cheapest first
    target: str  # label of its first target: the model its answers are expected from
    reason: str  # "rules" or "budget"
    cascade: bool  # the cascade runs this request (else `ctx.targets` were replaced)
    needs_check: bool  # a cheap tier on a route with a cascade: only checked answers are
    # cacheable (a stream or a budget downgrade is routed there without the checks)
    answered: bool = False  # the cascade produced the answer (a stage answer the cache stores)
    checked: bool = False  # the cascade accepted the chosen tier's own answer
    escalated: bool = False  # the cascade answered from a stronger tier than the chosen one
    provider: str = ""  # provider of `target` (what its answers are priced at)

    def cacheable(self) -> str | None:
        """None when the answer may be stored under `target`'s key, else why not."""
        if self.escalated:
            return "escalated"
        if self.needs_check and not self.checked:
            return "unchecked"
        return None
