"""Admin API of the cache: purge by tenant, route, model, tag, age or policy (admin key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from thrifty_core.errors import InvalidRequestError, NotFoundError

from ..services.cache.selector import Selector
from ..services.cache.stage import CacheStage
from .deps import AdminDep, StateDep

router = APIRouter(prefix="/v1/thrifty/cache", tags=["cache"])


class PurgeRequest(BaseModel):
    """Entries matching every given field are removed; no field at all purges everything."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        """A field sent as null is refused, not read as absent: `{"tenant": null}` (an unset
        variable in a script) would otherwise purge every tenant's entries."""
        if value is None:
            raise ValueError("null: give a value, or leave the field out")
        return value

    tenant: str | None = None
    route: str | None = None
    model: str | None = None
    tag: str | None = None
    older_than_seconds: float | None = Field(default=None, ge=0)
    policy: str | None = None


class PurgeResult(BaseModel):
    exact: int
    semantic: int
    policies: list[str] = Field(description="The cache policies whose stores were purged.")


@router.post("/purge")
async def purge(body: PurgeRequest, state: StateDep, _: AdminDep) -> PurgeResult:
    stage = next((s for s in state.stages if isinstance(s, CacheStage)), None)
    if stage is None:
        raise InvalidRequestError("No cache policy is configured on this gateway.")
    selector = Selector(
        tenant=body.tenant,
        route=body.route,
        model=body.model,
        tag=body.tag,
        older_than_seconds=body.older_than_seconds,
    )
    if body.policy is not None and body.policy not in stage.policies:
        # A typo must not read as "nothing to delete" (a compliance purge would stop there).
        known = ", ".join(sorted(stage.policies)) or "none"
        raise NotFoundError(
            f"No cache policy named '{body.policy}' on this gateway (policies: {known}).",
            param="policy",
        )
    counts = await stage.purge(selector, body.policy)
    names = sorted(stage.policies) if body.policy is None else [body.policy]
    return PurgeResult(**counts, policies=names)
