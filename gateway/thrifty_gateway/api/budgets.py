"""`GET /v1/thrifty/budgets`: every budget with its spend in the current period."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from ..services.budgets.stage import BudgetStage
from .deps import AuthedDep, StateDep

router = APIRouter()


@router.get("/v1/thrifty/budgets")
async def budgets(state: StateDep, caller: AuthedDep) -> Response:
    """Tenants see their own budget; the admin key sees every tenant and route budget."""
    stage = next((s for s in state.stages if isinstance(s, BudgetStage)), None)
    data: list[dict[str, Any]] = []
    if stage is not None:
        assert caller.tenant is not None
        data = await stage.status(None if caller.admin else caller.tenant.name)
    body = {"object": "list", "data": data, "admin": caller.admin}
    return Response(orjson.dumps(body), media_type="application/json")
