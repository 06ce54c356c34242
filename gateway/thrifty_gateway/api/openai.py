"""OpenAI-compatible endpoints: chat completions, embeddings, models."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from thrifty_core.errors import AuthenticationError, ModelNotFoundError

from .deps import CallerDep, StateDep, get_caller, get_proxy

router = APIRouter()


async def chat_completions(request: Request) -> Response:
    """Proxy a chat completion (streaming or not); unknown fields pass through untouched.

    The two proxied endpoints are plain Starlette routes: FastAPI's dependency solver costs
    more than the rest of the hot path (see bench/RESULTS.md). They resolve the same
    dependencies by calling them directly."""
    proxy = await get_proxy(request)
    caller = await get_caller(request, proxy.state)
    raw = await request.body()
    return await proxy.handle("chat", raw, request.headers, caller.tenant)


async def embeddings(request: Request) -> Response:
    """Proxy an embeddings request."""
    proxy = await get_proxy(request)
    caller = await get_caller(request, proxy.state)
    raw = await request.body()
    return await proxy.handle("embeddings", raw, request.headers, caller.tenant)


router.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
router.add_route("/v1/embeddings", embeddings, methods=["POST"])


@router.get("/v1/models")
async def list_models(state: StateDep, caller: CallerDep) -> Response:
    """The routes this caller may use, as OpenAI model objects."""
    routes = [r for r in state.config.routes if caller.tenant is not None or r.open]
    if caller.tenant is None and not routes:
        raise AuthenticationError("You didn't provide an API key.")
    data = [{"id": r.name, "object": "model", "created": 0, "owned_by": "thrifty"} for r in routes]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


@router.get("/v1/models/{model:path}")
async def get_model(model: str, state: StateDep, caller: CallerDep) -> Response:
    route = state.config.route(model)
    # Without a key, an unknown name and a closed route answer alike (401): which routes exist
    # is not told to callers who cannot use them.
    if caller.tenant is None and (route is None or not route.open):
        raise AuthenticationError("You didn't provide an API key.")
    if route is None:
        raise ModelNotFoundError(f"The model `{model}` does not exist.", param="model")
    body = {"id": route.name, "object": "model", "created": 0, "owned_by": "thrifty"}
    return Response(orjson.dumps(body), media_type="application/json")
