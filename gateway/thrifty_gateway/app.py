"""The gateway app factory: `create_app(config)` builds the FastAPI app; its lifespan opens
the upstream pools and builds the stages, and puts everything on `app.state.gateway`."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from thrifty_core.config import GatewayConfig, LedgerConfig

from .api import batches, budgets, cache_admin, dashboard, files, openai, ops, students
from .api.errors import BodyLimitMiddleware, UnexpectedErrorMiddleware, install_error_handlers
from .api.request_id import RequestIdMiddleware
from .services.auth import KeyStore
from .services.ledger import open_ledger
from .services.metrics import Metrics
from .services.pipeline import StageFactory
from .services.proxy import Proxy
from .services.ratelimit import Limiter, LocalLimiter
from .services.resilience import Breakers
from .services.upstream import KEY_RELOAD_SECONDS, HttpUpstream, ProviderKeys, UpstreamClient
from .stages import default_stage_factories
from .state import GatewayState, build_catalog, build_routes, unpriced_models

log = logging.getLogger(__name__)

# FastAPI's native OpenTelemetry hooks check providers on every request; the gateway exports
# Prometheus metrics instead, so they are switched off (measurably cheaper hot path).
NO_TELEMETRY: Any = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


def open_limiter(metrics: Metrics, config: LedgerConfig) -> Limiter:
    """Tenant rate limits: shared by every replica through the ledger's Redis when it is set,
    else this process's own buckets."""
    if not config.redis_url:
        return LocalLimiter()
    from .services.ratelimit_shared import SharedLimiter

    secret = config.redis_password
    return SharedLimiter.from_url(
        config.redis_url,
        metrics.registry,
        password=secret.read_store_credential() if secret else None,
        gateway=config.gateway,
    )


def build_state(config: GatewayConfig, upstream: UpstreamClient | None = None) -> GatewayState:
    metrics = Metrics()
    return GatewayState(
        config=config,
        catalog=build_catalog(config),
        keys=KeyStore.from_config(config),
        limiter=open_limiter(metrics, config.ledger),
        upstream=upstream or HttpUpstream(config.providers, ProviderKeys(config.providers)),
        breakers=Breakers(),
        metrics=metrics,
        ledger=open_ledger(metrics, config.ledger),
        routes=build_routes(config),
    )


# Shutdown waits this long for the work that follows responses (after-hooks, ledger entries):
# uvicorn gives open connections up to the longest route timeout first (server.py), and the
# operator sizes a gateway pod's grace period for both.
DRAIN_SECONDS = 5.0


async def _reload_keys(keys: KeyStore, upstream: UpstreamClient, interval: float) -> None:
    """Pick up rotated or revoked gateway keys, and rotated provider keys, from their mounted
    Secret files."""
    while True:
        await asyncio.sleep(interval)
        try:
            keys.reload_if_changed()
            if isinstance(upstream, HttpUpstream):
                upstream.reload_keys()
        except Exception:
            log.exception("key files could not be reloaded; retrying")


async def _close(state: GatewayState) -> None:
    """Close the stages (last built first), then the ledger, limiter and upstream pools."""
    for stage in reversed(state.stages):
        close = getattr(stage, "aclose", None)
        if close is not None:
            await close()
    await state.ledger.aclose()
    await state.limiter.aclose()
    await state.upstream.aclose()


def create_app(
    config: GatewayConfig,
    *,
    stage_factories: Sequence[StageFactory] | None = None,
    upstream: UpstreamClient | None = None,
) -> FastAPI:
    """The gateway app for `config`. Nothing is opened until the lifespan starts."""
    factories = list(default_stage_factories() if stage_factories is None else stage_factories)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(config, upstream)
        try:
            for factory in factories:
                stage = await factory(config, state)
                if stage is not None:
                    state.stages.append(stage)
        except BaseException:
            await _close(state)  # a failed start leaves no pool or task open behind it
            raise
        app.state.gateway = state
        app.state.proxy = proxy = Proxy(state)
        # Everything built so far lives for the whole process: move it out of the cyclic
        # collector's generations so that collections on the hot path stay short.
        gc.collect()
        gc.freeze()
        reload_keys = asyncio.create_task(
            _reload_keys(state.keys, state.upstream, KEY_RELOAD_SECONDS)
        )
        state.ready = True
        unpriced = unpriced_models(config, state.catalog)
        if unpriced:
            log.warning(
                "no price for %s: they cost 0 in usage, budgets and savings; set `prices` on "
                "the gateway or the provider",
                ", ".join(unpriced),
            )
        log.info(
            "gateway ready",
            extra={"port": config.server.port, "stages": ",".join(s.name for s in state.stages)},
        )
        try:
            yield
        finally:
            state.ready = False
            reload_keys.cancel()
            unfinished = await proxy.drain(DRAIN_SECONDS)
            if unfinished:
                log.warning(
                    "shutdown: work after responses unfinished, its accounting is lost",
                    extra={"count": unfinished},
                )
            await _close(state)

    app = FastAPI(
        title="Thrifty gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry=NO_TELEMETRY,
    )
    install_error_handlers(app)
    app.add_middleware(UnexpectedErrorMiddleware)  # inside the body limit: a 413 passes it
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.server.max_request_bytes)
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer carries the id
    app.include_router(openai.router)
    app.include_router(ops.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(cache_admin.router)
    app.include_router(budgets.router)
    app.include_router(dashboard.router)
    app.include_router(students.router)
    return app
