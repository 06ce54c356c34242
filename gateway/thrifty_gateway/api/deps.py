"""Route dependencies: the app state and the caller (tenant or admin)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from thrifty_core.config import TenantConfig
from thrifty_core.errors import AuthenticationError, PermissionDeniedError

from ..services.auth import ADMIN, METRICS, bearer
from ..services.proxy import Proxy
from ..state import GatewayState

# The admin identity bypasses validation: "admin" is reserved for it (no tenant can take it).
METRICS_PATH = "/metrics"
ADMIN_TENANT = TenantConfig.model_construct(name="admin", api_key_hashes=["0" * 64])


async def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


async def get_proxy(request: Request) -> Proxy:
    proxy: Proxy = request.app.state.proxy
    return proxy


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: a tenant, the admin, a metrics scraper (`metrics`: its key reads
    /metrics only), or nobody (no key)."""

    tenant: TenantConfig | None
    admin: bool = False
    metrics: bool = False


async def get_caller(
    request: Request, state: Annotated[GatewayState, Depends(get_state)]
) -> Caller:
    """Resolve the gateway key; a key that is present but unknown is refused (401)."""
    headers = request.headers
    key = bearer(headers.get("authorization"), headers.get("api-key"))
    if key is None:
        return Caller(None)
    owner = state.keys.resolve(key)
    if owner is None:
        state.metrics.rejected.labels("auth").inc()
        raise AuthenticationError("Incorrect API key provided.")
    if owner == ADMIN:
        return Caller(ADMIN_TENANT, admin=True)
    if owner == METRICS:
        if request.url.path != METRICS_PATH:
            raise PermissionDeniedError("This key may only read /metrics.")
        return Caller(None, metrics=True)
    return Caller(state.keys.tenant(owner))


async def require_caller(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    if caller.tenant is None:
        raise AuthenticationError(
            "You didn't provide an API key. Use 'Authorization: Bearer <key>'."
        )
    return caller


async def require_admin(caller: Annotated[Caller, Depends(require_caller)]) -> Caller:
    if not caller.admin:
        raise PermissionDeniedError("This endpoint needs the admin key.")
    return caller


StateDep = Annotated[GatewayState, Depends(get_state)]
ProxyDep = Annotated[Proxy, Depends(get_proxy)]
CallerDep = Annotated[Caller, Depends(get_caller)]
AuthedDep = Annotated[Caller, Depends(require_caller)]
AdminDep = Annotated[Caller, Depends(require_admin)]
