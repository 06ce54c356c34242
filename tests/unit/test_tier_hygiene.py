"""Hygiene: default stop sequences and the repeated long prefix detector."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from thrifty_core.api.costcontrol import Hygiene, PrefixWatch
from thrifty_core.config import RouteConfig
from thrifty_core.prices import PriceCatalog
from thrifty_gateway.services.hygiene.prefix import PrefixTracker, prefix_digest
from thrifty_gateway.services.hygiene.stage import HygieneMetrics, HygieneStage
from thrifty_gateway.services.pipeline import RequestContext, Target

SYSTEM = "You are a careful assistant. " * 40  # ~1100 characters


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def test_prefix_digest_ignores_what_follows_the_prefix() -> None:
    a = prefix_digest(messages("first question"), 64)
    b = prefix_digest(messages("another question entirely"), 64)
    assert a is not None and a == b
    assert prefix_digest(messages("q"), 100_000) is None


def test_tracker_is_a_bounded_lru() -> None:
    tracker = PrefixTracker(window=2)
    assert not tracker.seen(b"a")
    assert tracker.seen(b"a")
    assert not tracker.seen(b"b")
    assert not tracker.seen(b"c")  # evicts a
    assert not tracker.seen(b"a")


ROUTE = RouteConfig.model_validate({"name": "chat", "targets": [{"provider": "p", "model": "m"}]})


def ctx(body: dict[str, object]) -> RequestContext:
    return RequestContext(
        request_id="r",
        endpoint="chat",
        route=ROUTE,
        tenant=None,
        body=body,
        headers={},
        targets=[Target("p", "m")],
        catalog=PriceCatalog(),
    )


async def test_stage_adds_default_stop_and_counts_repeated_prefixes() -> None:
    registry = CollectorRegistry()
    hygiene = Hygiene(default_stop=["\n\nUser:"], prefix_watch=PrefixWatch(min_prefix_tokens=64))
    stage = HygieneStage({"chat": hygiene}, HygieneMetrics(registry))
    first = ctx({"messages": messages("one")})
    await stage.before_upstream(first)
    assert first.body["stop"] == ["\n\nUser:"]
    own = ctx({"messages": messages("two"), "stop": ["END"]})
    await stage.before_upstream(own)
    assert own.body["stop"] == ["END"]
    assert registry.get_sample_value("thrifty_prompt_repeated_prefix_total", {"route": "chat"})
    assert (
        registry.get_sample_value("thrifty_prompt_repeated_prefix_tokens_total", {"route": "chat"})
        == 64
    )
    assert registry.get_sample_value("thrifty_default_stop_added_total", {"route": "chat"}) == 1
