"""Retries, fallbacks and circuit breakers around single upstream attempts.

A small loop rather than tenacity: the policy spans several targets (retry this one, then
fall over to the next), honours `Retry-After` against a total budget shared by the whole
chain, skips targets whose breaker is open, and must keep the hot path (a first attempt that
succeeds) free of allocations. `backoff_delay` and `CircuitBreaker` are pure and unit-tested.

Retried: HTTP 429, 5xx and connection errors. A timeout falls over to the next target
without retrying the same one (it already cost a full timeout). Anything else (400, 404...)
is the caller's fault and goes back as is, except from a target a stage moved the request to
(`MovedTargets`: a cheaper tier ahead of the route's own targets): a cheaper model that cannot
take the request (`max_tokens` above its limit, a context too long, images, tools or a JSON
schema it does not support: 400, 404, 413, 422) passes it on to the route's own targets. Final
errors: timeout 504, 429 429 (with the provider's Retry-After), 5xx/connection/open circuits
502, provider auth failures 502.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from thrifty_core.errors import (
    RateLimitError,
    ServiceUnavailableError,
    ThriftyError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)

from .pipeline import Target
from .upstream import (
    Timeouts,
    UpstreamClient,
    UpstreamConnectionError,
    UpstreamResponse,
    UpstreamTimeout,
)

log = logging.getLogger(__name__)

RETRYABLE = frozenset({429, 500, 502, 503, 504, 520, 522, 524, 529})
# What a model a request was moved to answers when it cannot take that request.
CANNOT_TAKE = frozenset({400, 404, 413, 422})
BASE_DELAY = 0.2
MAX_DELAY = 8.0
MAX_RETRY_AFTER = 20.0


def parse_retry_after(headers: object, now: Callable[[], float] = time.time) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds, or an HTTP-date as RFC 9110
    allows); None if absent or unreadable."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    ms = get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now(), 0.0) if when.tzinfo is not None else None


def backoff_delay(
    attempt: int, retry_after: float | None, rand: Callable[[], float] = random.random
) -> float:
    """Delay before retry number `attempt` (0-based): Retry-After when given (plus up to 10%
    jitter), else exponential backoff with equal jitter, capped at MAX_DELAY."""
    if retry_after is not None:
        return retry_after * (1 + 0.1 * rand())
    ceiling: float = min(MAX_DELAY, BASE_DELAY * 2.0**attempt)
    return ceiling / 2 + rand() * ceiling / 2


@dataclass(slots=True)
class CircuitBreaker:
    """Per-target breaker: opens after `threshold` consecutive failures, stays open for
    `cooldown` seconds, then lets one probe through (half-open)."""

    threshold: int = 5
    cooldown: float = 30.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def allow(self) -> bool:
        if self.opened_at is None:
            return True
        if self.clock() - self.opened_at < self.cooldown or self.probing:
            return False
        self.probing = True
        return True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def failure(self) -> None:
        self.failures += 1
        self.probing = False
        if self.failures >= self.threshold or self.opened_at is not None:
            self.opened_at = self.clock()

    def reopens_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        if self.opened_at is None:
            return 0.0
        return max(self.cooldown - (self.clock() - self.opened_at), 0.0)


class BreakerOpen(Exception):
    """The breaker refuses calls: it is cooling down after a failure, or another call is
    probing."""


async def call_guarded(
    breaker: CircuitBreaker,
    coro: Any,
    timeout: float,
    *,
    answered: tuple[type[BaseException], ...] = (),
) -> Any:
    """Await `coro`, at most `timeout` seconds, under `breaker` (the stores' short-timeout
    guard): refused with `BreakerOpen` while it is open (`coro` is closed unawaited). A failure
    or a timeout counts against it and is re-raised, except an exception of a type in
    `answered` (the service answered with an error: it is up), which counts as a success; a
    success closes it. A cancelled call decides nothing: the next one may probe."""
    if not breaker.allow():
        coro.close()
        raise BreakerOpen
    try:
        result = await asyncio.wait_for(coro, timeout)
    except asyncio.CancelledError:
        breaker.probing = False
        raise
    except answered:
        breaker.success()
        raise
    except Exception:
        breaker.failure()
        raise
    breaker.success()
    return result


@dataclass(slots=True)
class Breakers:
    threshold: int = 5
    cooldown: float = 30.0
    by_target: dict[Target, CircuitBreaker] = field(default_factory=dict)

    def get(self, target: Target) -> CircuitBreaker:
        breaker = self.by_target.get(target)
        if breaker is None:
            breaker = CircuitBreaker(self.threshold, self.cooldown)
            self.by_target[target] = breaker
        return breaker


def _fail_once(breaker: CircuitBreaker, counted: bool) -> bool:
    """Count a failed attempt against the target's breaker once per request, however often the
    request is retried: a tenant's malformed request that the provider answers with a 500 (as
    vLLM and Ollama do) must not, by its own retries, open the breaker that every tenant's
    traffic goes through (two such requests did). Returns True (now counted)."""
    if not counted:
        breaker.failure()
    return True


def _error_of(body: bytes) -> dict[str, Any] | None:
    """The provider's OpenAI-shaped `error` object, None when its body has none."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    return err if isinstance(err, dict) else None


def _as_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _refusal(resp: UpstreamResponse) -> UpstreamStatusError:
    """A provider's non-retryable error answer as the client gets it."""
    err = _error_of(resp.body)
    if err is None:
        return UpstreamStatusError(f"upstream answered {resp.status}", status=resp.status)
    # The provider's error as it sent it: its param and code (null too) tell the client which
    # field to fix.
    return UpstreamStatusError(
        _as_text(err.get("message")) or f"upstream answered {resp.status}",
        status=resp.status,
        type_=_as_text(err.get("type")),
        param=_as_text(err.get("param")),
        code=_as_text(err.get("code")),
        passed_on=True,
    )


class MovedTargets(list[Target]):
    """Targets a stage moved a request to (the first `moved`: a cheaper tier) ahead of the
    route's own, the first of which is not among them. A moved target's 400/404/413/422 moves
    on to the route's own targets instead of going back to the client; `on_answer` hears which
    target answered (before the response is built: the tier it reports is the one that
    answered)."""

    def __init__(
        self,
        targets: Iterable[Target],
        moved: int,
        on_answer: Callable[[Target], None] | None = None,
    ) -> None:
        super().__init__(targets)
        self.moved = moved
        self.on_answer = on_answer


@dataclass(slots=True)
class Attempt:
    """What happened on the way to an answer (for logs, metrics and tests)."""

    target: Target
    response: UpstreamResponse
    attempts: int
    fallbacks: int


async def call_with_fallback(
    client: UpstreamClient,
    breakers: Breakers,
    targets: list[Target],
    path: str,
    payload_for: Callable[[Target], bytes],
    timeouts: Timeouts,
    *,
    stream: bool,
    max_retries: int,
    retry_budget: float,
    on_retry: Callable[[Target, str], None] | None = None,
) -> Attempt:
    """Send to the first healthy target, retrying and falling over per the module rules."""
    budget = retry_budget
    last: ThriftyError | None = None
    attempts = 0
    moved = targets.moved if isinstance(targets, MovedTargets) else 0
    refused: ThriftyError | None = None  # a moved target's: the route's own may take it
    for index, target in enumerate(targets):
        if index < moved and refused is not None:
            continue  # a moved target could not take the request: neither can its tier
        breaker = breakers.get(target)
        if not breaker.allow():
            # Every target cooling down is a 503 with the time to wait, not a bare 502.
            wait = max(breaker.reopens_in(), 1.0)
            last = (last if last is not refused else None) or ServiceUnavailableError(
                f"upstream {target.label} is failing; the gateway stopped calling it for "
                f"{wait:.0f}s",
                code="upstream_circuit_open",
                headers={"retry-after": str(int(wait + 0.999))},
            )
            log.warning(
                "upstream circuit open", extra={"upstream": target.label, "reason": "breaker"}
            )
            continue
        payload = payload_for(target)
        counted = False  # this request's failure counted against the target's breaker
        for attempt in range(max_retries + 1):
            attempts += 1
            retry_after: float | None = None
            try:
                resp = await client.send(target, path, payload, timeouts, stream)
            except asyncio.CancelledError:
                # The caller left (a client that hung up): this call decides nothing, and a
                # half-open breaker's probe must not stay taken, or the target would be
                # refused until a restart.
                breaker.probing = False
                raise
            except UpstreamTimeout:
                counted = _fail_once(breaker, counted)
                last = UpstreamTimeoutError(f"upstream {target.label} timed out")
                reason = "timeout"
            except UpstreamConnectionError:
                counted = _fail_once(breaker, counted)
                last = UpstreamError(f"upstream {target.label} is unreachable")
                reason = "connection"
            else:
                if resp.status < 400:
                    breaker.success()
                    if isinstance(targets, MovedTargets) and targets.on_answer is not None:
                        targets.on_answer(target)
                    return Attempt(target, resp, attempts, index)
                if resp.status not in RETRYABLE:
                    breaker.success()
                    if resp.status in (401, 403):
                        raise UpstreamError(
                            f"upstream {target.label} refused the gateway's credentials"
                        )
                    refusal = _refusal(resp)
                    if index >= moved or resp.status not in CANNOT_TAKE:
                        raise refusal
                    last = refused = refusal
                    log.info(
                        "moved target cannot take the request",
                        extra={"upstream": target.label, "reason": str(resp.status)},
                    )
                    break
                retry_after = parse_retry_after(resp.headers)
                if resp.status == 429:
                    # The provider is up and said when to come back: not a failure of the
                    # target (one tenant's oversized requests must not open the breaker that
                    # every tenant's traffic goes through). Its message says which limit.
                    breaker.success()
                    said = _as_text((_error_of(resp.body) or {}).get("message"))
                    last = RateLimitError(
                        f"upstream {target.label} is rate limited" + (f": {said}" if said else ""),
                        retry_after=retry_after or 1.0,
                        code="upstream_rate_limited",
                    )
                elif resp.status == 504:
                    counted = _fail_once(breaker, counted)
                    last = UpstreamTimeoutError(f"upstream {target.label} timed out (504)")
                else:
                    counted = _fail_once(breaker, counted)
                    last = UpstreamError(f"upstream {target.label} answered {resp.status}")
                reason = str(resp.status)
            log.info(
                "upstream attempt failed",
                extra={"upstream": target.label, "reason": reason, "attempt": attempts},
            )
            if on_retry:
                on_retry(target, reason)
            if reason == "timeout":  # not retried: the time is spent, the next target is tried
                break
            if attempt == max_retries or not breaker.allow():
                break
            if retry_after is not None and retry_after > MAX_RETRY_AFTER:
                break
            delay = backoff_delay(attempt, retry_after)
            if delay > budget:
                break
            budget -= delay
            await asyncio.sleep(delay)
    raise last or UpstreamError("no upstream target available")
