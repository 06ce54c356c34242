"""Operational endpoints: health, readiness, Prometheus metrics, usage summary."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from thrifty_core.errors import AuthenticationError, InvalidRequestError, PermissionDeniedError
from thrifty_core.running_cost import net_savings

from ..services.ledger import parse_since
from .deps import AuthedDep, StateDep, get_caller

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz")
async def readyz(state: StateDep) -> Response:
    if not state.ready:
        return Response(b'{"status":"starting"}', status_code=503, media_type="application/json")
    return Response(b'{"status":"ready"}', media_type="application/json")


@router.get("/metrics")
async def metrics(request: Request, state: StateDep) -> Response:
    # The key is looked at only when the gateway asks for one: a scraper sending a token of its
    # own (a service-account token) keeps working when it does not.
    if state.config.server.metrics_need_admin_key:
        caller = await get_caller(request, state)
        if caller.tenant is None and not caller.metrics:
            raise AuthenticationError(
                "/metrics needs the admin key or a metrics key (server.metricsNeedAdminKey)."
            )
        if not (caller.admin or caller.metrics):
            raise PermissionDeniedError("/metrics needs the admin key or a metrics key.")
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


@router.get("/v1/thrifty/usage")
async def usage(
    state: StateDep,
    caller: AuthedDep,
    bucket: Literal["hour", "day"] | None = Query(default=None),
    since: str | None = Query(default=None),
    tenant: str | None = Query(default=None),
) -> Response:
    """Usage, cost and savings per tenant/route/model. Tenants see only their own figures;
    the admin key sees every tenant (or one, with `?tenant=`). With a shared ledger
    (`ledger.redisUrl`) every replica answers with the figures of all of them."""
    try:
        since_ts = parse_since(since)
    except ValueError as exc:
        raise InvalidRequestError("since must be epoch seconds or ISO-8601", param="since") from exc
    assert caller.tenant is not None
    scope = tenant if caller.admin else caller.tenant.name
    body = await state.ledger.usage(since=since_ts, bucket=bucket, tenant=scope)
    if state.config.net_savings is not None and caller.admin and tenant is None:
        # The platform's running cost is set against all tenants' savings together (admin,
        # unfiltered view), over the same window as those savings: from the hour of the
        # earliest request summed (with a shared ledger, every replica's, across restarts).
        first = parse_since(body["from"])
        hours = max(time.time() - first, 0.0) / 3600 if first is not None else 0.0
        saved = body["totals"]["saved_by_lever_usd"]
        body["net_savings"] = net_savings(state.config.net_savings, saved, hours)
    # Off the loop too: with `bucket` the body runs to megabytes (the summing already is).
    return Response(await asyncio.to_thread(orjson.dumps, body), media_type="application/json")
