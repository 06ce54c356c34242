"""Embeddings coalescing: concurrent `/v1/embeddings` calls to the same route (and the same
parameters) within a short window become one upstream call with an input array; each caller
gets its own slice back, with its share of the usage.

A group flushes when its window ends, or at once when the next caller would push it past the
input-count or token limit. A lone caller (nothing in flight for its key and the last group
had one caller) skips the window: coalescing only waits when there is company to wait for.
Strings and token arrays never share a call (a mixed input array is refused). Each caller sees
what a direct call would have seen: when the provider refuses a group's call as a bad request
(4xx: an empty or too long input of one caller), every caller's input is sent again on its own,
so one caller's bad input fails only that caller; an outage (5xx, timeout) fails them all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from thrifty_core.errors import ThriftyError, UpstreamError, UpstreamStatusError
from thrifty_core.prices import PriceCatalog, Usage

from ...state import RouteRuntime
from ..pipeline import RequestContext, StageResponse, Target
from ..resilience import Breakers, call_with_fallback
from ..upstream import UpstreamClient

log = logging.getLogger(__name__)

Slice = tuple[list[Any], Target, int]  # embeddings objects, target, this caller's input tokens
# Per caller: first input, input count, estimated tokens, its result.
Waiter = tuple[int, int, int, asyncio.Future[Slice]]


def estimate_tokens(item: Any) -> int:
    return max(1, len(item) // 4) if isinstance(item, str) else max(1, len(item))


@dataclass
class Group:
    route: RouteRuntime
    params: dict[str, Any]
    inputs: list[Any] = field(default_factory=list)
    tokens: int = 0
    waiters: list[Waiter] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    flushed: bool = False


class Coalescer:
    """Merges concurrent embeddings requests (see the module docstring)."""

    def __init__(
        self,
        upstream: UpstreamClient,
        catalog: PriceCatalog,
        *,
        window_ms: float,
        max_inputs: int = 256,
        max_tokens: int = 200_000,
    ) -> None:
        self.upstream = upstream
        self.catalog = catalog
        self.breakers = Breakers()
        self.window = window_ms / 1000
        self.max_inputs = max_inputs
        self.max_tokens = max_tokens
        self._open: dict[bytes, Group] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: dict[bytes, int] = {}
        self._last_size: dict[bytes, int] = {}
        self.upstream_calls = 0
        self.requests = 0

    @staticmethod
    def items_of(body: Mapping[str, Any]) -> list[Any] | None:
        """The inputs of a request, if it can be coalesced (strings or token arrays)."""
        value = body.get("input")
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value:
            if all(isinstance(v, str) for v in value):
                return list(value)
            if all(isinstance(v, int) for v in value):
                return [value]
            if all(isinstance(v, list) for v in value):
                return list(value)
        return None

    async def embed(self, ctx: RequestContext, route: RouteRuntime) -> StageResponse | None:
        items = self.items_of(ctx.body)
        if items is None or len(items) > self.max_inputs:
            return None
        params = {k: v for k, v in ctx.body.items() if k not in ("input", "user")}
        shape = "tokens" if not isinstance(items[0], str) else "text"
        # Per tenant: one call's usage is split among its callers by an estimate (characters),
        # so inputs of many tokens per character would put one tenant's cost on another's
        # bill, budget and token limits, and the split would hint at the other's input size.
        key = orjson.dumps([ctx.tenant_name, shape, params], option=orjson.OPT_SORT_KEYS)
        tokens = sum(estimate_tokens(i) for i in items)
        group = self._open.get(key)
        if group is not None and (
            len(group.inputs) + len(items) > self.max_inputs
            or group.tokens + tokens > self.max_tokens
        ):
            self._flush(key, group)
            group = None
        alone = group is None and not self._inflight.get(key) and self._last_size.get(key, 1) <= 1
        if group is None:
            group = self._open[key] = Group(route, params)
            if not alone:
                group.timer = asyncio.get_running_loop().call_later(
                    self.window, self._flush, key, group
                )
        future: asyncio.Future[Slice] = asyncio.get_running_loop().create_future()
        group.waiters.append((len(group.inputs), len(items), tokens, future))
        group.inputs.extend(items)
        group.tokens += tokens
        self.requests += 1
        if alone:
            self._flush(key, group)
        data, target, share = await future
        usage = Usage(prompt_tokens=share)
        body = {
            "object": "list",
            "data": data,
            "model": target.model,
            "usage": {"prompt_tokens": share, "total_tokens": share},
        }
        return StageResponse(
            lever=None,
            body=body,
            usage=usage,
            model=target.model,
            served_by=f"{target.label}",
            cost_usd=self.catalog.cost(target.model, usage, provider=target.provider),
            headers={"x-thrifty-coalesced": str(len(group.waiters))},
        )

    def _flush(self, key: bytes, group: Group) -> None:
        if self._open.get(key) is group:
            del self._open[key]
        if group.timer is not None:
            group.timer.cancel()
            group.timer = None
        if group.flushed or not group.waiters:
            return
        group.flushed = True
        if len(self._last_size) > 4096:
            self._last_size.clear()
        self._last_size[key] = len(group.waiters)
        self._inflight[key] = self._inflight.get(key, 0) + 1
        task = asyncio.get_running_loop().create_task(self._call(key, group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, key: bytes, group: Group) -> None:
        try:
            await self._send(group)
        except Exception as exc:
            # Last resort: whatever went wrong, every caller gets an answer (an error), none
            # waits for ever.
            log.exception("coalesced embeddings call failed")
            _fail(group.waiters, UpstreamError(f"embeddings call failed ({type(exc).__name__})"))
        finally:
            # Cancelled (a shutdown) or returned without answering someone: they get an error.
            _fail(group.waiters, UpstreamError("the coalesced embeddings call was not answered"))
            left = self._inflight.get(key, 1) - 1
            if left > 0:
                self._inflight[key] = left
            else:
                self._inflight.pop(key, None)

    async def _request(
        self, group: Group, inputs: list[Any]
    ) -> tuple[list[dict[str, Any]], Target, int]:
        """One upstream call: the embeddings in input order, the target, the provider's
        prompt token count (0 when it sent none)."""
        route = group.route
        self.upstream_calls += 1
        attempt = await call_with_fallback(
            self.upstream,
            self.breakers,
            list(route.targets),
            "embeddings",
            lambda t: orjson.dumps({**group.params, "model": t.model, "input": inputs}),
            route.timeouts,
            stream=False,
            max_retries=route.config.max_retries,
            retry_budget=route.config.retry_budget_seconds,
        )
        try:
            answer = orjson.loads(attempt.response.body)
            data = sorted(answer["data"], key=lambda d: d["index"])
            usage = answer.get("usage")
            total = int(usage.get("prompt_tokens") or 0) if isinstance(usage, dict) else 0
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamError(
                f"upstream embeddings answer was malformed ({type(exc).__name__})"
            ) from exc
        if len(data) != len(inputs):
            raise UpstreamError("upstream returned a different number of embeddings")
        return data, attempt.target, total

    async def _send(self, group: Group) -> None:
        try:
            data, target, total = await self._request(group, group.inputs)
        except UpstreamStatusError as exc:
            if len(group.waiters) == 1:
                _fail(group.waiters, exc)
                return
            # The provider refused the merged call as a bad request: that may be one caller's
            # input. Each caller's own call decides what that caller gets.
            await asyncio.gather(*(self._alone(group, waiter) for waiter in group.waiters))
            return
        except ThriftyError as exc:
            _fail(group.waiters, exc)
            return
        for start, count, tokens, future in group.waiters:
            share = round(total * tokens / max(group.tokens, 1)) if total else tokens
            _deliver(future, data[start : start + count], target, share)

    async def _alone(self, group: Group, waiter: Waiter) -> None:
        start, count, tokens, future = waiter
        try:
            data, target, total = await self._request(group, group.inputs[start : start + count])
        except ThriftyError as exc:
            _fail([waiter], exc)
            return
        _deliver(future, data, target, total or tokens)

    async def aclose(self) -> None:
        for key, group in list(self._open.items()):
            self._flush(key, group)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _deliver(
    future: asyncio.Future[Slice], data: list[dict[str, Any]], target: Target, tokens: int
) -> None:
    """A caller's embeddings, indexed from 0 as its own call would have them."""
    if not future.done():
        future.set_result(([{**d, "index": i} for i, d in enumerate(data)], target, tokens))


def _fail(waiters: list[Waiter], exc: Exception) -> None:
    for _, _, _, future in waiters:
        if not future.done():
            future.set_exception(exc)
