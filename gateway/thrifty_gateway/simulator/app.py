"""The simulator's HTTP app: an OpenAI-compatible provider with latency and fault injection.

Faults, per request: header `x-sim-fault: 429|500|502|503|timeout|truncate|not-json|...`; per model
(`SimulatorSettings.model_faults`, e.g. every call to `storm-model` answers 429); or at random
with the configured ratios. `GET /sim/stats` returns request and fault counters per model (tests
use it to check retries and fallbacks); `POST /sim/reset` clears them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from . import batches, engine
from .settings import SimState, SimulatorSettings, load_oracle

log = logging.getLogger(__name__)
JSON = "application/json"


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON, headers=headers)


def _error(
    status: int,
    message: str,
    type_: str,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": None}}
    return _json(body, status, headers)


def state_of(request: Request) -> SimState:
    sim: SimState = request.app.state.sim
    return sim


async def _delay(settings: SimulatorSettings, sim: SimState) -> None:
    delay = settings.latency_ms
    if settings.jitter_ms:
        delay += sim.rng.random() * settings.jitter_ms
    if delay:
        await asyncio.sleep(delay / 1000)


async def _fault_response(sim: SimState, model: str, request: Request) -> Response | str | None:
    """A response for status faults; 'truncate' for truncation; None for a normal answer."""
    fault = sim.pick_fault(model, request.headers.get("x-sim-fault"))
    sim.requests[model] += 1
    if fault is None:
        return None
    sim.faults[f"{model}:{fault}"] += 1
    if fault == "429":
        retry = sim.settings.retry_after_seconds
        return _error(
            429,
            "Rate limit reached (simulated).",
            "rate_limit_error",
            {"retry-after": f"{retry:g}", "retry-after-ms": str(int(retry * 1000))},
        )
    if fault in ("500", "502", "503"):
        return _error(int(fault), "The server had an error (simulated).", "server_error")
    if fault == "timeout":
        await asyncio.sleep(sim.settings.hang_seconds)
        return None
    if fault == "not-json":
        page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        return Response(page, status_code=200, media_type="text/html")
    return fault  # answered, with a flaw: truncate, split-emoji


async def chat_completions(request: Request) -> Response:
    sim = state_of(request)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return _error(400, "Invalid JSON body.", "invalid_request_error")
    if not isinstance(body, dict) or not body.get("messages") or not body.get("model"):
        return _error(400, "model and messages are required.", "invalid_request_error")
    refused = engine.chat_request_error(body)
    if refused is not None:
        return _error(400, refused[0], "invalid_request_error", param=refused[1])
    model = str(body["model"])
    fault = await _fault_response(sim, model, request)
    if isinstance(fault, Response):
        return fault
    await _delay(sim.settings, sim)
    completion = engine.chat_completion(body, oracle=sim.oracle, truncate=fault == "truncate")
    split = fault == "split-emoji"
    if split:
        completion["choices"][0]["message"]["content"] += " " + engine.SPLIT_EMOJI
    if not body.get("stream"):
        return _json(completion)
    asked = bool((body.get("stream_options") or {}).get("include_usage"))
    include_usage = asked and sim.settings.stream_usage
    chunk_delay = sim.settings.chunk_delay_ms / 1000

    async def events() -> AsyncIterator[bytes]:
        if fault == "error-stream":
            err = {"message": "The server is overloaded (simulated).", "type": "server_error"}
            yield b"data: " + orjson.dumps({"error": {**err, "param": None, "code": None}})
            yield b"\n\ndata: [DONE]\n\n"
            return
        chunks = list(engine.stream_chunks(completion, include_usage))
        for index, chunk in enumerate(chunks):
            if fault in ("cut-stream", "abort-stream") and index == len(chunks) // 2:
                if fault == "abort-stream":
                    raise ConnectionAbortedError("simulated: connection dropped mid-stream")
                return  # no [DONE]
            for data in engine.split_emoji(chunk) if split else [orjson.dumps(chunk)]:
                yield b"data: " + data + b"\n\n"
            if chunk_delay:
                await asyncio.sleep(chunk_delay)
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def create_embeddings(request: Request) -> Response:
    sim = state_of(request)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return _error(400, "Invalid JSON body.", "invalid_request_error")
    if not isinstance(body, dict) or "input" not in body or not body.get("model"):
        return _error(400, "model and input are required.", "invalid_request_error")
    refused = engine.embeddings_request_error(body)
    if refused is not None:
        return _error(400, refused[0], "invalid_request_error", param=refused[1])
    fault = await _fault_response(sim, str(body["model"]), request)
    if isinstance(fault, Response):
        return fault
    await _delay(sim.settings, sim)
    return _json(engine.embeddings(body, sim.settings.embedding_dimensions))


async def list_models(request: Request) -> Response:
    models = state_of(request).settings.models
    data = [
        {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "sim"} for m in models
    ]
    return _json({"object": "list", "data": data})


async def stats(request: Request) -> Response:
    sim = state_of(request)
    return _json({"requests": dict(sim.requests), "faults": dict(sim.faults)})


async def reset(request: Request) -> Response:
    sim = state_of(request)
    sim.requests.clear()
    sim.faults.clear()
    return _json({"ok": True})


async def healthz(request: Request) -> Response:
    del request
    return _json({"status": "ok"})


def create_simulator_app(settings: SimulatorSettings) -> FastAPI:
    """The simulated provider; state lives on `app.state.sim` (a `SimState`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        oracle = load_oracle(settings.oracle) if settings.oracle else None
        app.state.sim = SimState(settings=settings, oracle=oracle)
        app.state.sim.rng.seed(settings.seed)
        log.info("simulator ready", extra={"port": settings.port})
        yield

    app = FastAPI(
        title="Thrifty provider simulator",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.middleware("http")
    async def require_key(request: Request, call_next: Any) -> Any:
        key = request.app.state.sim.settings.api_key
        if key and request.url.path.startswith("/v1/"):
            if not hmac.compare_digest(request.headers.get("authorization", ""), f"Bearer {key}"):
                body = {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                }
                return _json(body, 401)
        started = time.perf_counter()
        response = await call_next(request)
        if request.url.path.startswith("/v1/"):  # as OpenAI's API answers
            response.headers["x-request-id"] = f"req_{os.urandom(16).hex()}"
            ms = int((time.perf_counter() - started) * 1000)
            response.headers["openai-processing-ms"] = str(ms)
        return response

    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/v1/embeddings", create_embeddings, methods=["POST"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/sim/stats", stats, methods=["GET"])
    app.add_api_route("/sim/reset", reset, methods=["POST"])
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.include_router(batches.router)
    return app


def serve(settings: SimulatorSettings) -> None:
    """Run the simulator until interrupted (uvloop + httptools)."""
    import uvicorn

    uvicorn.run(
        create_simulator_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        lifespan="on",
    )
