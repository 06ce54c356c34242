"""The shared ledger's pieces without Redis: a bucket's fields round-trip, a shared ledger
keeps counting in memory (and says so) when Redis is unreachable."""

from __future__ import annotations

from tests.services import free_port
from thrifty_core.prices import Usage
from thrifty_gateway.services.ledger import Entry, Ledger, Totals, summarise
from thrifty_gateway.services.ledger_shared import SharedBuckets, from_fields, to_fields
from thrifty_gateway.services.metrics import Metrics

NOW = 1_800_000_000.0


def test_bucket_fields_round_trip() -> None:
    t = Totals(
        requests=3,
        errors=1,
        prompt_tokens=120,
        completion_tokens=40,
        cached_tokens=0,
        cost_usd=0.0125,
        baseline_usd=0.05,
        saved_usd={"cache": 0.03, "tier": -0.001},
        served_by_lever={"cache": 2},
        served_by_tier={"cheap": 1},
    )
    ints, floats = to_fields(t)
    assert "cached_tokens" not in ints  # zeros are not written
    raw = {k.encode(): str(v).encode() for k, v in {**ints, **floats}.items()}
    assert from_fields(raw) == t


def test_summaries_of_shared_and_memory_buckets_agree() -> None:
    ledger = Ledger(Metrics(), clock=lambda: NOW)
    ledger.record(Entry("a", "r", "m", Usage(10, 5), 0.01, {"cache": 0.02}, lever="cache"))
    ledger.record(Entry("b", "r", "m", Usage(1, 1), 0.001, {}, tier="cheap"))
    key = (int(NOW // 3600) * 3600, "a", "r", "m")
    memory = ledger.summary(tenant="a")
    body = summarise([(key, ledger._buckets[key])], None, None, "a", NOW)
    assert body["totals"] == memory["totals"]
    assert memory["source"] == "memory"


async def test_unreachable_redis_keeps_counting_in_memory() -> None:
    metrics = Metrics()
    url = f"redis://127.0.0.1:{free_port()}/0"
    shared = SharedBuckets.from_url(url, metrics.registry, 24)
    ledger = Ledger(metrics, shared=shared)
    for _ in range(3):
        ledger.record(Entry("a", "r", "m", Usage(10, 5), 0.01, {}))
    assert shared.pending == 1  # three requests, one bucket's delta
    assert await shared.flush() is False
    assert shared.failing and shared.pending == 1  # kept for the retry
    body = await ledger.usage()
    assert body["source"] == "memory"
    assert body["totals"]["requests"] == 3
    errors = metrics.registry.get_sample_value
    # the background writer may have tried (and failed) once more meanwhile
    assert (errors("thrifty_ledger_shared_errors_total", {"op": "write"}) or 0) >= 1
    assert (
        metrics.registry.get_sample_value("thrifty_ledger_shared_errors_total", {"op": "read"})
        == 1.0
    )
    await ledger.aclose()
