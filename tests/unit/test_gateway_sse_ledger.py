"""SSE splitting and assembly, the ledger's summaries, errors and log redaction."""

from __future__ import annotations

import logging

import orjson
import pytest

from thrifty_core.errors import RateLimitError, UpstreamTimeoutError
from thrifty_core.logging import JsonFormatter, redact
from thrifty_core.prices import Usage
from thrifty_gateway.services.ledger import Entry, Ledger, parse_since
from thrifty_gateway.services.metrics import Metrics
from thrifty_gateway.services.sse import (
    EventSplitter,
    StreamAssembler,
    completion_to_chunks,
    event_data,
    usage_of,
)
from thrifty_gateway.simulator import engine

BODY = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "Tell me about batching and caching."}],
}


def _events(data: bytes, cut: int) -> list[bytes]:
    splitter = EventSplitter()
    return [*splitter.feed(data[:cut]), *splitter.feed(data[cut:])]


def test_splitter_handles_any_cut_and_assembler_rebuilds_the_completion() -> None:
    completion = engine.chat_completion(BODY)
    stream = (
        b"".join(
            b"data: " + orjson.dumps(c) + b"\n\n" for c in engine.stream_chunks(completion, True)
        )
        + b"data: [DONE]\n\n"
    )
    for cut in (1, 17, len(stream) // 2, len(stream) - 3):
        events = _events(stream, cut)
        assembler = StreamAssembler()
        for event in events:
            payload = event_data(event)
            assert payload is not None
            if payload != b"[DONE]":
                assembler.add(orjson.loads(payload))
        rebuilt = assembler.completion()
        assert (
            rebuilt["choices"][0]["message"]["content"]
            == (completion["choices"][0]["message"]["content"])
        )
        assert rebuilt["choices"][0]["finish_reason"] == "stop"
        assert usage_of(rebuilt) == usage_of(completion)


def test_completion_to_chunks_round_trips() -> None:
    completion = engine.chat_completion(BODY)
    assembler = StreamAssembler()
    events = list(completion_to_chunks(completion, include_usage=True))
    assert events[-1] == b"data: [DONE]\n\n"
    for event in events[:-1]:
        assembler.add(orjson.loads(event_data(event) or b"{}"))
    message = assembler.completion()["choices"][0]["message"]
    assert message["content"] == completion["choices"][0]["message"]["content"]
    assert message["role"] == "assistant"
    assert assembler.usage == completion["usage"]


def test_ledger_totals_savings_and_buckets() -> None:
    now = [1_800_000_000.0]
    ledger = Ledger(Metrics(), clock=lambda: now[0])
    ledger.record(Entry("a", "gpt-4o", "gpt-4o", Usage(100, 50), 0.001, {}))
    now[0] += 7200
    ledger.record(Entry("a", "gpt-4o", "gpt-4o", Usage(), 0.0, {"cache": 0.001}, lever="cache"))
    ledger.record(Entry("b", "mini", "gpt-4o-mini", Usage(10, 5), 0.0001, {}, error=False))
    full = ledger.summary(bucket="hour")
    assert full["totals"]["requests"] == 3
    assert full["totals"]["baseline_cost_usd"] == pytest.approx(0.0021)
    assert full["totals"]["saved_by_lever_usd"]["cache"] == pytest.approx(0.001)
    assert full["totals"]["served_by_lever"]["cache"] == 1
    assert len(full["buckets"]) == 3
    only_a = ledger.summary(tenant="a", since=now[0] - 60)
    assert only_a["totals"]["requests"] == 1
    assert parse_since("2027-01-15T08:00:00Z") == parse_since("2027-01-15T08:00:00")
    assert parse_since("2027-01-15T08:00:00+01:00") == parse_since("2027-01-15T07:00:00Z")
    assert parse_since("1800000000") == 1_800_000_000.0


def test_error_bodies_have_openai_shape() -> None:
    err = RateLimitError("slow down", retry_after=1.2)
    assert err.status == 429 and err.headers == {"retry-after": "2"}
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}
    assert UpstreamTimeoutError("t").status == 504


def test_json_formatter_keeps_only_allowed_extras_and_redacts_keys() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key %s", ("sk-live-abcdef",), None)
    record.__dict__.update({"tenant": "team-a", "body": "the user's prompt", "status": 200})
    line = orjson.loads(JsonFormatter().format(record))
    assert line["msg"] == "key [redacted]"
    assert line["tenant"] == "team-a" and line["status"] == 200
    assert "body" not in line
    assert redact("Authorization: Bearer abc.def.ghi-123") == "Authorization: [redacted]"


def test_a_lever_that_cost_more_than_the_baseline_is_counted_as_lost_in_metrics() -> None:
    """Counters only go up: a negative saving (a cascade escalation) goes to thrifty_lost_usd,
    so that saved - lost per lever, and baseline - cost overall, match the ledger."""
    from thrifty_core.prices import Usage as U
    from thrifty_gateway.services.ledger import Entry, Ledger
    from thrifty_gateway.services.metrics import Metrics

    metrics = Metrics()
    ledger = Ledger(metrics, 24)
    ledger.record(Entry("t", "r", "m", U(10, 10), 0.3, {"tier": -0.1}, lever=None))
    ledger.record(Entry("t", "r", "m", U(10, 10), 0.1, {"tier": 0.5}, lever=None))
    reg = metrics.registry
    labels = {"tenant": "t", "route": "r", "lever": "tier"}
    assert reg.get_sample_value("thrifty_saved_usd_total", labels) == pytest.approx(0.5)
    assert reg.get_sample_value("thrifty_lost_usd_total", labels) == pytest.approx(0.1)
    baseline = reg.get_sample_value(
        "thrifty_baseline_cost_usd_total", {"tenant": "t", "route": "r"}
    )
    cost = reg.get_sample_value(
        "thrifty_cost_usd_total", {"tenant": "t", "route": "r", "model": "m"}
    )
    assert baseline is not None and cost is not None
    assert baseline - cost == pytest.approx(0.5 - 0.1)
    assert ledger.summary()["totals"]["saved_usd"] == pytest.approx(0.4)
