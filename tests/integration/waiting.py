"""Wait for state the gateway produces after a response (cache fills, the ledger, token debits)
by polling what it exposes, with a deadline, instead of sleeping a fixed time.

`target` is either a gateway's base URL (a separate process) or an HTTP client whose base_url
points at the gateway (a `TestClient` around an in-process app)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_delay, wait_fixed

ADMIN_KEY = "sk-local-admin"


class Reply(Protocol):
    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


class Client(Protocol):
    """What the helpers need of an HTTP client (httpx, or the httpx2 a TestClient is)."""

    def get(self, url: str, *, params: Any = ..., headers: Any = ...) -> Reply: ...


Target = Client | str


def wait_until(
    predicate: Callable[[], bool],
    what: str,
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
) -> None:
    """Poll `predicate` until it holds; AssertionError naming `what` after `timeout` seconds."""

    def give_up(state: RetryCallState) -> None:
        del state
        raise AssertionError(f"timed out after {timeout:g}s waiting until {what}")

    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_result(lambda ok: not ok),
        retry_error_callback=give_up,
    )
    retrying(predicate)


def _get(target: Target, path: str, **kwargs: Any) -> Reply:
    if isinstance(target, str):
        return httpx.get(f"{target}{path}", **kwargs)
    return target.get(path, **kwargs)


def recorded_requests(target: Target, tenant: str | None = None) -> int:
    """Requests the gateway's ledger holds (all tenants, or one), as the admin sees them. The
    ledger is written after the stage after-hooks (cache fills) and just before the token
    debit, in one step of the event loop, so a recorded request has been fully accounted."""
    params = {"tenant": tenant} if tenant is not None else {}
    resp = _get(
        target, "/v1/thrifty/usage", params=params, headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert resp.status_code == 200, resp.text
    return int(resp.json()["totals"]["requests"])


def wait_recorded(target: Target, count: int, tenant: str | None = None) -> None:
    """Wait until the ledger holds at least `count` requests (of `tenant`, or all)."""
    who = f"tenant {tenant}" if tenant is not None else "all tenants"
    wait_until(
        lambda: recorded_requests(target, tenant) >= count,
        f"the ledger holds {count} request(s) of {who}",
    )


def metric_total(target: Target, sample: str, **labels: str) -> float:
    """Sum of the /metrics samples named `sample` whose labels include `labels`."""
    resp = _get(target, "/metrics")
    assert resp.status_code == 200, resp.text
    return sum(
        s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    )


def wait_metric(target: Target, sample: str, at_least: float, **labels: str) -> None:
    """Wait until the /metrics sample `sample{labels}` reaches `at_least`."""
    wait_until(
        lambda: metric_total(target, sample, **labels) >= at_least,
        f"{sample}{labels} >= {at_least:g}",
    )


def wait_cache_stores(target: Target, count: int, result: str = "exact") -> None:
    """Wait until the cache has stored `count` answers in a layer (`thrifty_cache_stores`)."""
    wait_metric(target, "thrifty_cache_stores_total", count, result=result)
