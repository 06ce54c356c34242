"""Retry delays, Retry-After parsing and the circuit breaker (pure parts)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from thrifty_gateway.services.resilience import (
    MAX_DELAY,
    CircuitBreaker,
    backoff_delay,
    parse_retry_after,
)


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    lows = [backoff_delay(a, None, rand=lambda: 0.0) for a in range(8)]
    highs = [backoff_delay(a, None, rand=lambda: 1.0) for a in range(8)]
    assert lows[0] == pytest.approx(0.1) and highs[0] == pytest.approx(0.2)
    assert all(b >= a for a, b in zip(highs, highs[1:], strict=False))
    assert highs[-1] == MAX_DELAY
    assert all(lo <= hi for lo, hi in zip(lows, highs, strict=True))


def test_retry_after_wins_with_small_jitter() -> None:
    assert backoff_delay(0, 2.0, rand=lambda: 0.0) == 2.0
    assert backoff_delay(5, 2.0, rand=lambda: 1.0) == pytest.approx(2.2)


def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # past
    assert parse_retry_after({}) is None


def test_breaker_opens_then_half_opens_with_one_probe() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=3, cooldown=10.0, clock=lambda: now[0])
    for _ in range(2):
        breaker.failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.5
    assert breaker.state == "half-open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.failure()  # the probe failed: open again for a full cooldown
    assert breaker.state == "open"
    now[0] = 21.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


def test_retry_after_as_an_http_date() -> None:
    """RFC 9110 allows a date: the seconds until then (a date past means now)."""
    from email.utils import format_datetime

    now = 1_800_000_000.0
    when = format_datetime(datetime.fromtimestamp(now + 3, UTC), usegmt=True)
    got = parse_retry_after({"retry-after": when}, now=lambda: now)
    assert got is not None and abs(got - 3.0) < 1.0
    past = format_datetime(datetime.fromtimestamp(now - 60, UTC), usegmt=True)
    assert parse_retry_after({"retry-after": past}, now=lambda: now) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None


async def test_a_cancelled_probe_lets_the_next_call_probe() -> None:
    """The half-open breaker's one probe is a request whose client hung up: the probe must be
    given back, or the target would be refused until the gateway restarts."""
    import asyncio

    from thrifty_gateway.services.pipeline import Target
    from thrifty_gateway.services.resilience import Breakers, call_with_fallback
    from thrifty_gateway.services.upstream import Timeouts, UpstreamResponse

    target = Target("p", "m")
    now = [0.0]
    breakers = Breakers(threshold=1, cooldown=10.0)
    breaker = breakers.get(target)
    breaker.clock = lambda: now[0]
    breaker.failure()  # open
    now[0] = 11.0  # half-open: the next call probes

    class Hanging:
        async def send(self, *_: object) -> UpstreamResponse:
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

        async def aclose(self) -> None:
            return None

    call = asyncio.ensure_future(
        call_with_fallback(
            Hanging(),
            breakers,
            [target],
            "chat/completions",
            lambda _: b"{}",
            Timeouts(connect=1.0, total=1.0),
            stream=True,
            max_retries=0,
            retry_budget=0.0,
        )
    )
    await asyncio.sleep(0.01)
    assert breaker.probing
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert not breaker.probing and breaker.allow()  # the next call may probe
