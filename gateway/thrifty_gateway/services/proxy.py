"""The proxied request: route, limits, stages, upstream, response, ledger.

The hot path avoids pydantic: the body is parsed once with orjson into a dict, only `model`,
`stream` and `stream_options` are read, the upstream payload is the same dict re-serialised
with the target's model, and a non-streaming upstream answer goes back byte for byte.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from thrifty_core.config import TenantConfig
from thrifty_core.errors import (
    NO_RETRY,
    AuthenticationError,
    InvalidRequestError,
    ModelNotFoundError,
    ThriftyError,
    UpstreamError,
    UpstreamTimeoutError,
)
from thrifty_core.prices import Usage

from ..state import GatewayState, RouteRuntime
from .ledger import Entry
from .pipeline import (
    CacheControl,
    Endpoint,
    Outcome,
    RequestContext,
    StageResponse,
    Target,
    wants_defer,
)
from .resilience import call_with_fallback
from .sse import (
    DONE,
    EventSplitter,
    StreamAssembler,
    completion_to_chunks,
    encode_chunks,
    error_event,
    event_data,
    usage_of,
)

log = logging.getLogger(__name__)

JSON = "application/json"
PATHS: dict[str, str] = {"chat": "chat/completions", "embeddings": "embeddings"}
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


# Levels of objects a body may end up inside when it is queued or stored (a batch line, a
# deferred request): it must still be writable there.
WRAP_LEVELS = 4


def unwritable(value: Any) -> bool:
    """Whether orjson could not write `value` back, inside `WRAP_LEVELS` more levels: it reads
    arrays and objects nested 1,024 levels deep but writes only 254, so such a body, once
    accepted, failed (a 500) when forwarded, stored or queued. Asking orjson itself (in C, a
    few microseconds for a chat body, about a millisecond per MB) is cheaper and more exact
    than walking the body in Python."""
    for _ in range(WRAP_LEVELS):
        value = [value]
    try:
        orjson.dumps(value)
    except TypeError:
        return True
    return False


NESTED_TOO_DEEP = "The request body nests arrays and objects too deeply (over 250 levels)."


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError("The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    if unwritable(body):
        raise InvalidRequestError(NESTED_TOO_DEEP)
    return body


def upstream_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The provider's response headers a client may use: its request id (what its support
    asks for), as `x-thrifty-upstream-request-id` beside the gateway's own `x-request-id`, and
    its processing time. Not its rate-limit headers: they describe the gateway's account with
    the provider, shared by every tenant, not the caller's limits. Nothing else (cookies)."""
    out: dict[str, str] = {}
    request_id = headers.get("x-request-id")
    if request_id:
        out["x-thrifty-upstream-request-id"] = request_id
    processing = headers.get("openai-processing-ms")
    if processing:
        out["openai-processing-ms"] = processing
    return out


def check_chat_shape(body: dict[str, Any]) -> None:
    """The fields every stage reads from a chat request have the type OpenAI's API takes: a
    wrongly typed one is the client's 400 (as the provider answers it), never a 500 from a stage
    that iterated it."""
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequestError("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequestError(
            "Invalid type for 'messages': expected an array of objects.", param="messages"
        )
    if not messages:
        raise InvalidRequestError(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            param="messages",
        )
    for i, message in enumerate(messages):
        _check_message(i, message)
    _check_fields(body)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequestError(
            "Invalid type for 'stream_options': expected an object.", param="stream_options"
        )
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise InvalidRequestError(
            f"Invalid value for 'n': expected an integer of at least 1, got {n!r:.40}.",
            param="n",
        )
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and isinstance(fmt.get("type"), str)):
        raise InvalidRequestError(
            "Invalid type for 'response_format': expected an object with a 'type'.",
            param="response_format",
        )
    for name in ("tools", "functions"):
        value = body.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(t, dict) for t in value)
        ):
            raise InvalidRequestError(
                f"Invalid type for '{name}': expected an array of objects.", param=name
            )


def _invalid(param: str, expected: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid type for '{param}': expected {expected}.", param=param)


def _check_message(i: int, message: dict[str, Any]) -> None:
    """One message's fields, as OpenAI's API types them. A malformed one is refused here: sent
    on, a provider may answer it with a 500 (vLLM, Ollama), which is retried and counted
    against the target's breaker that every tenant's traffic goes through."""
    at = f"messages[{i}]"
    if not isinstance(message.get("role"), str):
        raise _invalid(f"{at}.role", "a string")
    content = message.get("content")
    if content is not None and not isinstance(content, str | list):
        raise _invalid(f"{at}.content", "a string or an array of content parts")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and isinstance(part.get("type"), str)):
                raise _invalid(f"{at}.content[{j}]", "an object with a 'type'")
    for name in ("name", "tool_call_id"):
        if message.get(name) is not None and not isinstance(message[name], str):
            raise _invalid(f"{at}.{name}", "a string")
    if message["role"] == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise InvalidRequestError(
            f"Missing required parameter: '{at}.tool_call_id'.", param=f"{at}.tool_call_id"
        )
    calls = message.get("tool_calls")
    if calls is None:
        return
    if not isinstance(calls, list):
        raise _invalid(f"{at}.tool_calls", "an array of objects")
    for j, call in enumerate(calls):
        if not _well_formed_call(call):
            raise _invalid(
                f"{at}.tool_calls[{j}]",
                "an object with an 'id' and a 'function' with 'name' and 'arguments' strings "
                "(or, with type 'custom', a 'custom' with 'name' and 'input' strings)",
            )


# A tool call's type -> the object it carries and that object's payload string.
_CALL_FIELDS = {"function": ("function", "arguments"), "custom": ("custom", "input")}


def _well_formed_call(call: Any) -> bool:
    """A function tool call (`type` "function" or absent), or a custom tool's (`type`
    "custom": free-form `input` instead of JSON `arguments`); other types are the
    provider's to judge."""
    if not isinstance(call, dict) or not isinstance(call.get("id"), str):
        return False
    kind = call.get("type", "function")
    fields = _CALL_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        return isinstance(kind, str)
    body = call.get(fields[0])
    return (
        isinstance(body, dict)
        and isinstance(body.get("name"), str)
        and isinstance(body.get(fields[1]), str)
    )


# Fields of a chat request and the JSON types OpenAI's API takes for them (None: absent).
_NUMBER = (int, float)
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "stream": ((bool,), "a boolean"),
    "temperature": (_NUMBER, "a number"),
    "top_p": (_NUMBER, "a number"),
    "presence_penalty": (_NUMBER, "a number"),
    "frequency_penalty": (_NUMBER, "a number"),
    "max_tokens": ((int,), "an integer"),
    "max_completion_tokens": ((int,), "an integer"),
    "seed": ((int,), "an integer"),
    "top_logprobs": ((int,), "an integer"),
    "logprobs": ((bool,), "a boolean"),
    "logit_bias": ((dict,), "an object"),
    "stop": ((str, list), "a string or an array of strings"),
    "tool_choice": ((str, dict), "a string or an object"),
    "parallel_tool_calls": ((bool,), "a boolean"),
    "user": ((str,), "a string"),
}


def _check_fields(body: dict[str, Any]) -> None:
    for name, (types, expected) in _FIELD_TYPES.items():
        value = body.get(name)
        if value is None:
            continue
        # (JSON true is no number: bool is an int in Python)
        wrong = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if name == "stop" and isinstance(value, list):
            wrong = not all(isinstance(s, str) for s in value)
        if wrong:
            raise _invalid(name, expected)


def resolve_route(state: GatewayState, body: dict[str, Any]) -> RouteRuntime:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("you must provide a model parameter", param="model")
    route = state.routes.get(model)
    if route is None:
        raise ModelNotFoundError(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
        )
    return route


def _clamp_max_tokens(body: dict[str, Any], ceiling: int | None) -> None:
    if ceiling is None:
        return
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value > ceiling:
            body[key] = ceiling
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        # (not `max_tokens`: deprecated, and refused by OpenAI's reasoning models)
        body["max_completion_tokens"] = ceiling


def estimate_usage(body: dict[str, Any], answer: dict[str, Any] | None) -> Usage:
    """~4 characters per token, for providers that report no usage."""
    prompt = len(orjson.dumps(body.get("messages") or body.get("input") or "")) // 4
    completion = 0
    for choice in (answer or {}).get("choices") or ():
        msg = choice.get("message") or {}
        completion += len(msg.get("content") or "") // 4
        completion += (
            len(orjson.dumps(msg.get("tool_calls") or [])) // 4 if msg.get("tool_calls") else 0
        )
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def hide_choice_fields(answer: Any, fields: set[str]) -> dict[str, Any] | None:
    """A copy of `answer` (a completion or a chunk) with `fields` of its choices nulled, or
    None when no choice carries one of them (nothing to hide)."""
    if not fields or not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
        return None
    choices = answer["choices"]
    hide = [isinstance(c, dict) and any(c.get(f) is not None for f in fields) for c in choices]
    if not any(hide):
        return None
    return {
        **answer,
        "choices": [
            {**c, **dict.fromkeys(c.keys() & fields)} if h else c
            for c, h in zip(choices, hide, strict=True)
        ],
    }


class Proxy:
    """Handles one proxied endpoint for a `GatewayState`."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn_finish(self, ctx: RequestContext, outcome: Outcome) -> None:
        """Run `_finish` in its own task: a client that hangs up mid-stream cancels the
        response task, but must not cancel accounting or cache fills."""
        task = asyncio.get_running_loop().create_task(self._finish(ctx, outcome))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> int:
        """At shutdown, before the stores and the ledger close: wait (at most `timeout`) for the
        work spawned after the last streams (after-hooks, ledger entries). Returns how many
        tasks were still unfinished at the deadline."""
        if not self._tasks:
            return 0
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        return len(pending)

    async def handle(
        self, endpoint: Endpoint, raw: bytes, headers: Any, tenant: TenantConfig | None
    ) -> Response:
        state = self.state
        body = parse_body(raw)
        if tenant is None:  # an unknown model and a closed route answer alike: 401
            model = body.get("model")
            open_route = state.routes.get(model) if isinstance(model, str) else None
            if open_route is None or not open_route.config.open:
                state.metrics.rejected.labels("auth").inc()
                raise AuthenticationError(
                    "You didn't provide a valid API key. Use 'Authorization: Bearer <key>'."
                )
            route = open_route
        else:
            route = resolve_route(state, body)
            try:
                await state.limiter.check(tenant)
            except ThriftyError:
                state.metrics.rejected.labels("rate_limit").inc()
                raise
        if endpoint == "chat":
            check_chat_shape(body)
            _clamp_max_tokens(body, route.config.max_tokens_ceiling)
        stream = endpoint == "chat" and bool(body.get("stream"))
        include_usage = stream and bool((body.get("stream_options") or {}).get("include_usage"))
        ctx = RequestContext(
            request_id=headers.get("x-request-id") or os.urandom(8).hex(),
            endpoint=endpoint,
            route=route.config,
            tenant=tenant,
            body=body,
            headers=headers,
            targets=list(route.targets),
            catalog=state.catalog,
            stream=stream,
            include_usage=include_usage,
            cache_control=CacheControl.parse(headers),
            defer=wants_defer(headers),
        )
        try:
            for stage in state.stages:
                answer = await stage.before_upstream(ctx)
                if answer is not None:
                    return self._stage_response(ctx, answer)
            if ctx.cache_control.only_if_cached:
                raise UpstreamTimeoutError(
                    "No cached answer and only-if-cached was asked.",
                    code="cache_miss",
                    headers=NO_RETRY,
                )
            return await self._upstream(ctx, route)
        except ThriftyError as exc:
            if ctx.spent_usd > 0:
                await self._finish_spent(ctx, exc)
            else:
                self._finish_error(ctx, exc)
            raise
        except BaseException:  # cancelled (the client left) or unexpected: no finish will run
            ctx.done()
            raise

    # -- upstream ---------------------------------------------------------------------------

    async def _upstream(self, ctx: RequestContext, route: RouteRuntime) -> Response:
        state = self.state
        body = ctx.body
        if ctx.defer:  # asked to defer, answered now (no batch queue here, or not deferrable)
            ctx.response_headers.setdefault("x-thrifty-deferred", "refused")
        if ctx.stream and not ctx.include_usage:
            body = {
                **body,
                "stream_options": {**(body.get("stream_options") or {}), "include_usage": True},
            }

        if ctx.upstream_extra:
            body = {**body, **ctx.upstream_extra}

        def payload_for(target: Target) -> bytes:
            return orjson.dumps({**body, "model": target.model})

        def on_retry(target: Target, reason: str) -> None:
            state.metrics.upstream_retries.labels(target.label, reason).inc()

        attempt = await call_with_fallback(
            state.upstream,
            state.breakers,
            ctx.targets,
            PATHS[ctx.endpoint],
            payload_for,
            route.timeouts,
            stream=ctx.stream,
            max_retries=ctx.route.max_retries,
            retry_budget=ctx.route.retry_budget_seconds,
            on_retry=on_retry,
        )
        target = attempt.target
        resp = attempt.response
        headers = {
            "x-thrifty-route": ctx.route.name,
            "x-thrifty-upstream": target.label,
            "x-request-id": ctx.request_id,
            **upstream_headers(resp.headers),
            **ctx.response_headers,
        }
        if resp.chunks is not None:
            return StreamingResponse(
                self._relay(ctx, target, resp.chunks, resp.close),
                media_type="text/event-stream",
                headers={**headers, **_SSE_HEADERS},
            )
        try:
            answer = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            answer = None
        usage = usage_of(answer) or estimate_usage(ctx.body, answer)
        cost = state.catalog.cost(target.model, usage, provider=target.provider)
        headers["x-thrifty-cost-usd"] = f"{cost:.8f}"
        status, content = resp.status, resp.body
        if not isinstance(answer, dict):
            # An HTML page from a proxy in front of the provider, a cut body: passed on as
            # JSON (with a 200) the SDK raised a JSONDecodeError, which no `except
            # openai.APIError` catches.
            error = UpstreamError(
                f"upstream {target.label} answered HTTP {resp.status} with a body that is "
                "not a JSON object"
            )
            status, content, answer = error.status, orjson.dumps(error.body()), None
        outcome = Outcome(status, answer, usage, target.model, target.label, cost)
        hidden = hide_choice_fields(answer, ctx.hidden_choice_fields)
        if hidden is not None:  # the client did not ask for them: neither it nor caches see them
            content = orjson.dumps(hidden)
            outcome.body, outcome.upstream_body = hidden, answer
        return Response(
            content,
            status_code=status,
            media_type=JSON,
            headers=headers,
            background=BackgroundTask(self._finish, ctx, outcome),
        )

    async def _relay(
        self, ctx: RequestContext, target: Target, chunks: AsyncIterator[bytes], close: Any
    ) -> AsyncIterator[bytes]:
        """Forward events as they come; drop the usage chunk the client did not ask for."""
        splitter = EventSplitter()
        # Assembled always, stages or not: a stream the client leaves before its usage chunk
        # is still paid for, and its cost is estimated from the text relayed so far (parsing
        # a chunk costs about a microsecond).
        assembler = StreamAssembler()
        usage: Usage | None = None
        done = False
        unread = False  # a chunk was relayed that could not be parsed into the assembled answer
        left = False  # the client hung up (booked 499, as nginx does: no upstream failure)
        try:
            async for data in chunks:
                out: list[bytes] = []
                for event in splitter.feed(data):
                    payload = event_data(event)
                    if payload is None or payload == b"[DONE]":
                        if payload == b"[DONE]" and usage is not None and not done:
                            # Headers left before the cost was known: say it in an SSE
                            # comment (clients ignore comments) just before [DONE].
                            cost = self.state.catalog.cost(
                                target.model, usage, provider=target.provider
                            )
                            out.append(b": x-thrifty-cost-usd %.8f\n\n" % cost)
                        done = done or payload == b"[DONE]"
                        out.append(event)
                        continue
                    try:
                        chunk = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        # Relayed as is (lone UTF-16 surrogates, say), but the assembled answer
                        # lacks it: it must never be stored or replayed as the answer.
                        unread = True
                        out.append(event)
                        continue
                    assembler.add(chunk)
                    found = usage_of(chunk)
                    if found is not None:
                        usage = found
                        if not ctx.include_usage and not chunk.get("choices"):
                            continue
                    hidden = hide_choice_fields(chunk, ctx.hidden_choice_fields)
                    if hidden is not None:
                        event = b"data: " + orjson.dumps(hidden) + b"\n\n"
                    out.append(event)
                if out:
                    yield b"".join(out)
            rest = splitter.rest()
            if rest.strip():
                done = done or event_data(rest) == b"[DONE]"  # the last event, unterminated
                yield rest if rest.endswith(b"\n\n") else rest.rstrip(b"\n") + b"\n\n"
            if not done and usage is None:
                # Ended without [DONE]: the answer was cut short. Said to the client, whose
                # SDK would otherwise take the partial text for the whole answer.
                log.warning(
                    "upstream stream ended early",
                    extra={"upstream": target.label, "route": ctx.route.name},
                )
                yield error_event(
                    f"The stream from upstream {target.label} ended before it was complete.",
                    "upstream_stream_incomplete",
                )
        except Exception as exc:  # a reset, an idle timeout: the stream broke off
            log.warning(
                "upstream stream broke off",
                extra={
                    "upstream": target.label,
                    "route": ctx.route.name,
                    "error_type": type(exc).__name__,
                },
            )
            yield error_event(
                f"The stream from upstream {target.label} broke off.", "upstream_stream_error"
            )
        except (asyncio.CancelledError, GeneratorExit):
            left = True
            raise
        finally:
            close()
            whole = not unread and not assembler.broken
            completion = assembler.completion() if whole else None
            final = usage or estimate_usage(ctx.body, completion)
            cost = self.state.catalog.cost(target.model, final, provider=target.provider)
            status = 200 if done or usage is not None else 499 if left else 502
            outcome = Outcome(status, completion, final, target.model, target.label, cost)
            hidden = hide_choice_fields(completion, ctx.hidden_choice_fields)
            if hidden is not None:
                outcome.body, outcome.upstream_body = hidden, completion
            self._spawn_finish(ctx, outcome)

    # -- stage answers ----------------------------------------------------------------------

    def _stage_response(self, ctx: RequestContext, answer: StageResponse) -> Response:
        if answer.lever and answer.saved_usd:
            ctx.add_saving(answer.lever, answer.saved_usd)
        outcome = Outcome(
            answer.status,
            answer.body,
            answer.usage,
            answer.model or ctx.route.name,
            answer.served_by or (answer.lever or "stage"),
            answer.cost_usd,
            from_stage=True,
            lever=answer.lever,
            booked_later=answer.booked_later,
        )
        headers = {
            "x-thrifty-route": ctx.route.name,
            "x-thrifty-upstream": outcome.served_by,
            "x-thrifty-cost-usd": f"{answer.cost_usd:.8f}",
            "x-request-id": ctx.request_id,
            **ctx.response_headers,
            **answer.headers,
        }
        if ctx.stream and answer.status == 200 and (answer.chunks or answer.body):
            events = list(
                encode_chunks(answer.chunks)
                if answer.chunks is not None
                else completion_to_chunks(answer.body or {}, ctx.include_usage)
            )

            async def replay() -> AsyncIterator[bytes]:
                try:
                    for event in events:
                        yield event
                finally:
                    self._spawn_finish(ctx, outcome)

            return StreamingResponse(
                replay(), media_type="text/event-stream", headers={**headers, **_SSE_HEADERS}
            )
        task = BackgroundTask(self._finish, ctx, outcome)
        return Response(
            orjson.dumps(answer.body) if answer.body is not None else b"",
            status_code=answer.status,
            media_type=JSON,
            headers=headers,
            background=task,
        )

    # -- accounting -------------------------------------------------------------------------

    async def _finish(self, ctx: RequestContext, outcome: Outcome) -> None:
        """After the response: stage after-hooks, ledger, limits, metrics. Never raises."""
        try:
            await self._account(ctx, outcome)
        finally:
            ctx.done()

    async def _account(self, ctx: RequestContext, outcome: Outcome) -> None:
        state = self.state
        outcome.cost_usd += ctx.spent_usd  # work paid for that did not answer (see RequestContext)
        for stage in state.stages:
            try:
                await stage.after_upstream(ctx, outcome)
            except Exception:
                log.exception("stage after_upstream failed", extra={"reason": stage.name})
        if not outcome.booked_later:
            state.ledger.record(
                Entry(
                    tenant=ctx.tenant_name,
                    route=ctx.route.name,
                    model=outcome.model,
                    usage=outcome.usage,
                    cost_usd=outcome.cost_usd,
                    savings=ctx.savings,
                    lever=outcome.lever,
                    error=outcome.status >= 400,
                    tier=ctx.state.get("tier"),
                )
            )
        if ctx.tenant is not None:
            await state.limiter.record_tokens(ctx.tenant, outcome.usage.total_tokens)
        m = state.metrics
        m.child(
            m.requests,
            ctx.tenant_name,
            ctx.route.name,
            str(outcome.status),
            outcome.lever or "none",
        ).inc()
        m.child(m.duration, ctx.route.name).observe(time.perf_counter() - ctx.started)

    async def _finish_spent(self, ctx: RequestContext, exc: ThriftyError) -> None:
        """A failed request that had paid for work it did not serve (a cascade whose last
        tier failed, a student that was not confident): booked and charged like an answer
        (`_account` adds `ctx.spent_usd`)."""
        outcome = Outcome(
            exc.status,
            None,
            Usage(),
            _asked_model(ctx),
            "error",
            0.0,
            error_type=type(exc).__name__,
        )
        _log_failure(ctx, exc)
        await self._finish(ctx, outcome)

    def _finish_error(self, ctx: RequestContext, exc: ThriftyError) -> None:
        ctx.done()
        state = self.state
        state.ledger.record(
            Entry(
                tenant=ctx.tenant_name,
                route=ctx.route.name,
                model=_asked_model(ctx),
                usage=Usage(),
                cost_usd=0.0,
                savings={},
                error=True,
            )
        )
        state.metrics.requests.labels(
            ctx.tenant_name, ctx.route.name, str(exc.status), "none"
        ).inc()
        state.metrics.duration.labels(ctx.route.name).observe(time.perf_counter() - ctx.started)
        _log_failure(ctx, exc)


def _asked_model(ctx: RequestContext) -> str:
    """The model a failed request was for: its route's first target (the route's name, an
    alias, is no model: failures showed up as models of their own in the usage report)."""
    return ctx.targets[0].model if ctx.targets else ctx.route.name


def _log_failure(ctx: RequestContext, exc: ThriftyError) -> None:
    log.warning(
        "request failed",
        extra={
            "tenant": ctx.tenant_name,
            "route": ctx.route.name,
            "status": exc.status,
            "error_type": type(exc).__name__,
            "request_id": ctx.request_id,
        },
    )


__all__ = ["DONE", "Proxy"]
