"""Batch work against the tenant and route budgets of the budgets stage (services/budgets).

Deferred requests and Batch API lines are not priced when they are accepted but when a worker
has run them: the gateway's ledger sync `charge`s what each finished line cost to its tenant's
and route's budgets (in the budget's period of the moment the line finished). Creating a
batch is refused with the stage's hard-limit error (429 `budget_exceeded`) while the tenant,
or a route the batch uses, is over its hard limit; a deferred request is refused by the
budgets stage itself, which runs before the deferral. As in the stage, while the spend store
fails the check reads this replica's copy of the spend (the last reading plus its own spend
since); only an unexpected error lets the batch through (logged). The spend of finished lines
the store refused is charged again later (the ledger sync keeps those lines pending).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ..budgets.stage import BudgetExceededError, BudgetLine, BudgetStage

log = logging.getLogger(__name__)


def find_budgets(stages: Iterable[Any]) -> BudgetStage | None:
    return next((s for s in stages if isinstance(s, BudgetStage)), None)


def _lines(budgets: BudgetStage, tenant: str, routes: Iterable[str]) -> list[BudgetLine]:
    found: dict[tuple[str, str], BudgetLine] = {}
    for route in [*routes] or [""]:
        for line in budgets.lines_for(tenant, route):
            found[(line.scope, line.owner)] = line
    return list(found.values())


async def refuse_over_hard_limit(
    budgets: BudgetStage | None, tenant: str, routes: Iterable[str], now: float
) -> None:
    """Raise `BudgetExceededError` when `tenant` or one of `routes` is at its hard limit."""
    if budgets is None:
        return
    lines = [ln for ln in _lines(budgets, tenant, routes) if ln.budget.hard_limit_usd is not None]
    if not lines:
        return
    windows = [ln.window(now) for ln in lines]
    try:
        spent = await budgets.spent(lines, now)
    except Exception:
        budgets.metrics.store_errors.inc()
        log.warning("budget check failed; batch let through", exc_info=True)
        return
    for line, (_, _, end), usd in zip(lines, windows, spent, strict=True):
        b = line.budget
        assert b.hard_limit_usd is not None
        if usd >= b.hard_limit_usd:
            budgets.metrics.limited.labels(line.scope, line.owner, "hard").inc()
            raise BudgetExceededError.for_line(line, usd, end, now)


async def charge(
    budgets: BudgetStage | None,
    tenant: str,
    route: str,
    spend: list[tuple[str, float]],
    when: float,
    bucket: str,
) -> None:
    """Add the `spend` of finished batch lines ((line id, usd): each is charged once, even when
    a write that timed out after Redis applied it is retried with other lines) of `tenant` on
    `route` at `when` to the budgets it falls under. Raises when the spend store fails
    (counted in the budgets' metrics): the caller keeps the lines and charges them again
    later, rather than lose their spend. `bucket`: see `SpendStore.charge_lines`."""
    if budgets is None or sum(u for _, u in spend) <= 0:
        return
    lines = budgets.lines_for(tenant, route)
    items = [(key, end.timestamp()) for key, _, end in (ln.window(when) for ln in lines)]
    if not items:
        return
    try:
        await budgets.store.charge_lines(items, [(i, u) for i, u in spend if u > 0], bucket)
    except Exception:
        budgets.metrics.store_errors.inc()
        raise
