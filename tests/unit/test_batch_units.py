"""Batching pure parts: input validation, status transitions, packing, provider outputs,
the file store's size limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import openai
import orjson
import pytest

from thrifty_core.api.batchqueue import BatchLimits, BatchQueueSpec
from thrifty_core.config import BatchConfig
from thrifty_gateway.services.batching.files import FilesystemStore, StoreFullError
from thrifty_gateway.services.batching.finalize import order_of, output_line
from thrifty_gateway.services.batching.model import BatchRecord, Line, Result, can_move
from thrifty_gateway.services.batching.provider import (
    Packer,
    job_lost,
    next_poll,
    parse_outputs,
    poll_error_is_gone,
)
from thrifty_gateway.services.batching.validate import validate_input, validate_lines
from thrifty_gateway.services.batching.worker import worker_options
from thrifty_gateway.services.pipeline import Target


def item(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "custom_id": f"r{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        **extra,
    }


def jsonl(*items: Any) -> bytes:
    return b"\n".join(orjson.dumps(i) for i in items) + b"\n"


def test_valid_input_yields_lines() -> None:
    report = validate_input(jsonl(item(1), item(2)), BatchLimits(), {"m"})
    assert report.ok
    assert [line.custom_id for line in report.lines] == ["r1", "r2"]
    assert report.lines[0].endpoint == "chat"


def test_a_file_saved_with_a_utf8_bom_is_read() -> None:
    """Windows editors start UTF-8 files with a byte-order mark: it is no part of line 1 (the
    whole upload was refused: "line 1: not valid JSON"); inside a line it stays an error."""
    report = validate_input(b"\xef\xbb\xbf" + jsonl(item(1), item(2)), BatchLimits(), {"m"})
    assert report.ok and [line.custom_id for line in report.lines] == ["r1", "r2"]
    second = jsonl(item(1)) + b"\xef\xbb\xbf" + jsonl(item(2))
    assert [e.line for e in validate_input(second, BatchLimits(), {"m"}).errors] == [2]


def test_every_bad_line_is_reported() -> None:
    data = jsonl(item(1), item(1), {"custom_id": "x"}, item(3, method="GET")) + b"{oops\n"
    report = validate_input(data, BatchLimits(), None)
    assert [(e.line, e.code) for e in report.errors] == [
        (2, "duplicate_custom_id"),
        (3, "invalid_url"),
        (4, "invalid_method"),
        (5, "invalid_json"),
    ]
    assert "line 2: duplicate custom_id 'r1'" in report.message()
    assert report.as_errors()["data"][0]["line"] == 2


def test_limits_refuse_whole_file() -> None:
    limits = BatchLimits(max_lines_per_batch=2, max_file_bytes=1024)
    assert validate_input(jsonl(item(1), item(2), item(3)), limits).errors[0].code == (
        "too_many_lines"
    )
    big = jsonl(*(item(i) for i in range(20)))
    assert validate_input(big, limits).errors[0].code == "file_too_large"
    assert validate_input(b"\n", limits).errors[0].code == "empty_file"


def test_streamed_lines_validate_like_a_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl(item(1)) + b"\n" + jsonl(item(2)) + b"\n\n")
    limits = BatchLimits()
    with path.open("rb") as f:
        report = validate_lines(f, path.stat().st_size, limits, keep_lines=False)
    assert [(e.line, e.code) for e in report.errors] == [(2, "empty_line")]
    assert report.lines == []  # checked, not kept
    whole = validate_input(path.read_bytes(), limits)
    assert [(e.line, e.code) for e in whole.errors] == [(2, "empty_line")]
    assert [x.custom_id for x in whole.lines] == ["r1", "r2"]
    small = BatchLimits(max_lines_per_batch=2)
    with path.open("rb") as f:
        too_many = validate_lines(iter([*f, b'{"custom_id": "x"}\n']), 10, small)
    assert [e.message for e in too_many.errors] == ["the file has 6 lines; the limit is 2"]


def test_mixed_urls_are_refused() -> None:
    emb = {**item(2), "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}
    report = validate_input(jsonl(item(1), emb), BatchLimits())
    assert [e.code for e in report.errors] == ["mixed_urls"]


def test_status_transitions() -> None:
    assert can_move("validating", "in_progress")
    assert can_move("in_progress", "finalizing")
    assert can_move("finalizing", "completed")
    assert can_move("cancelling", "finalizing")
    assert not can_move("completed", "in_progress")
    assert not can_move("cancelled", "cancelling")


def test_record_roundtrip_keeps_private_fields() -> None:
    record = BatchRecord(id="batch_1", endpoint="/v1/embeddings", tenant="t", deferred=True)
    again = BatchRecord.load(record.store())
    assert (again.tenant, again.deferred) == ("t", True)
    assert "tenant" not in record.public()


def line(i: int, size: int = 10) -> Line:
    return Line("b", f"c{i}", "chat", {"model": "m", "messages": [{"content": "x" * size}]})


def test_packer_flushes_by_count_size_and_age() -> None:
    target = Target("p", "m")
    packer = Packer(max_lines=3, max_bytes=10_000, window_seconds=5)
    assert packer.add("1-0", line(1), target, 0.0) == []
    assert packer.add("2-0", line(2), target, 0.0) == []
    full = packer.add("3-0", line(3), target, 0.0)
    assert [len(p.entries) for p in full] == [3]
    assert len(packer) == 0
    packer.add("4-0", line(4), target, 10.0)
    assert packer.due(14.0) == []
    assert packer.next_due(14.0) == pytest.approx(1.0)
    assert [len(p.entries) for p in packer.due(15.0)] == [1]
    small = Packer(max_lines=100, max_bytes=400, window_seconds=5)
    flushed = []
    for i in range(5):
        flushed += small.add(f"{i}-0", line(i, 100), target, 0.0)
    assert flushed and all(p.size <= 400 for p in flushed)
    job = orjson.loads(flushed[0].jsonl().splitlines()[0])
    assert job["custom_id"] == "0-0" and job["body"]["model"] == "m"


def test_parse_outputs_prefers_success_and_classifies() -> None:
    out = jsonl({"custom_id": "a", "response": {"status_code": 200, "body": {"x": 1}}})
    err = jsonl(
        {"custom_id": "b", "response": {"status_code": 500, "body": {}}, "error": None},
        {"custom_id": "c", "response": None, "error": {"code": "batch_expired", "message": ""}},
        {"custom_id": "d", "response": {"status_code": 400, "body": {}}},
    )
    got = parse_outputs(out, err)
    assert got["a"].ok and got["a"].body == {"x": 1}
    assert got["b"].retryable and got["c"].retryable and got["c"].error_code == "batch_expired"
    assert not got["d"].retryable


def test_poll_backoff_grows_and_is_capped() -> None:
    assert next_poll(2, 0, 0) == 2
    assert next_poll(2, 0, 100) > next_poll(2, 0, 10) > 2
    assert next_poll(2, 0, 10**9) == 20


def api_error(status: int) -> openai.APIStatusError:
    request = httpx2.Request("GET", "http://provider/v1/batches/b")
    response = httpx2.Response(status, request=request, json={"error": {"message": "x"}})
    return openai.APIStatusError("x", response=response, body=None)


def test_poll_errors_saying_the_job_is_gone() -> None:
    assert poll_error_is_gone(api_error(404)) and poll_error_is_gone(api_error(401))
    assert poll_error_is_gone(api_error(403))
    assert not poll_error_is_gone(api_error(429)) and not poll_error_is_gone(api_error(500))
    request = httpx2.Request("GET", "http://provider/v1/batches/b")
    assert not poll_error_is_gone(openai.APIConnectionError(request=request))


def test_job_is_given_up_after_failures_or_past_its_window() -> None:
    def lost(failures: int, gone: bool, now: float) -> str | None:
        return job_lost(
            failures=failures, gone=gone, max_failures=5, started=1000.0, deadline=9e4, now=now
        )

    assert lost(4, True, 1100.0) is None
    assert lost(50, False, 1100.0) is None  # transient failures: wait for the deadline
    assert "5 polls failed" in (lost(5, True, 1100.0) or "")
    assert "completion window" in (lost(0, False, 1000.0 + 90001) or "")


def test_output_lines_and_order() -> None:
    ok = Result("a", 200, {"id": 1})
    bad = Result("b", None, None, "poison_line", "no")
    assert orjson.loads(output_line("batch_x", ok))["response"]["status_code"] == 200
    assert orjson.loads(output_line("batch_x", bad))["error"]["code"] == "poison_line"
    assert order_of(jsonl({"custom_id": "b"}, {"custom_id": "a"}), {"a": ok, "z": ok}) == [
        "b",
        "a",
        "z",
    ]


async def test_file_store_limit_and_roundtrip(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path, max_total_bytes=1000)
    meta = await store.put(b"x" * 600, filename="a", purpose="batch", tenant="t")
    assert (await store.read(meta.id)) == b"x" * 600
    with pytest.raises(StoreFullError):
        await store.put(b"y" * 600, filename="b", purpose="batch", tenant="t")
    assert [f.id for f in await store.list("t")] == [meta.id]
    assert await store.list("other") == []
    assert await store.get("../etc/passwd") is None
    assert await store.delete(meta.id)
    assert await store.read(meta.id) is None


async def test_rate_gate_holds_requests_over_the_per_minute_limit() -> None:
    import asyncio

    from thrifty_core.api.batchqueue import DirectLimits
    from thrifty_gateway.services.batching.direct import RateGate

    gate = RateGate(DirectLimits(requests_per_minute=2))
    await asyncio.wait_for(gate.acquire(10), 1)
    await asyncio.wait_for(gate.acquire(10), 1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(gate.acquire(10), 0.2)
    tokens = RateGate(DirectLimits(tokens_per_minute=100))
    await asyncio.wait_for(tokens.acquire(500), 1)  # one call may exceed: the bucket owes 400
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(tokens.acquire(1), 0.2)


def line_cache() -> tuple[Any, Any, Line]:
    """An exact line cache over a memory store for route gpt-4o-mini, its store, and a line."""
    from thrifty_core.api.cachepolicy import CachePolicySpec
    from thrifty_gateway.services.batching.linecache import ExactLineCache, _RouteCache
    from thrifty_gateway.services.cache.entry import Codec
    from thrifty_gateway.services.cache.exact import MemoryExactStore

    store = MemoryExactStore(10, Codec(), 1 << 20)
    cache = ExactLineCache(
        {"gpt-4o-mini": _RouteCache(CachePolicySpec(), store, "p/v1", "simulator/gpt-4o-mini")},
        [store],
    )
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    return cache, store, Line(batch_id="b", custom_id="c", endpoint="chat", body=body, tenant="t")


async def test_line_cache_labels_entries_with_the_target_model() -> None:
    """The provider answers with a dated snapshot name; the entry is labelled with the target
    model its key was built with, as the cache stage labels its own, so one purge by model
    removes both."""
    from thrifty_gateway.services.cache.selector import Selector

    cache, store, line = line_cache()
    answer = {
        "id": "x",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop",
            }
        ],
    }
    _, fence = await cache.get(line)
    await cache.put(line.fenced(fence), answer)
    hit, _ = await cache.get(line)
    assert hit is not None and hit.body == answer
    assert await store.purge(Selector(model="gpt-4o-mini")) == 1
    assert (await cache.get(line))[0] is None


async def test_a_batch_answer_never_undoes_a_purge_that_started_after_its_lookup() -> None:
    """A provider job runs for hours: an admin purge meanwhile (tenant, route, everything)
    must not be undone when the job's answers arrive. The line keeps the fence read at its
    lookup (also through the job record's JSON); an answer whose fence moved, or that has
    none, is not stored."""
    from thrifty_gateway.services.cache.selector import Selector

    cache, store, line = line_cache()
    answer = {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop",
            }
        ],
    }
    hit, fence = await cache.get(line)
    assert hit is None and fence is not None
    queued = Line.from_json(line.fenced(fence).to_json())  # as a provider job keeps it
    assert queued.fence == fence
    await store.purge(Selector(tenant="t"))  # while the job runs
    await cache.put(queued, answer)
    assert (await cache.get(line))[0] is None  # the purge stands
    await cache.put(line, answer)  # no fence read: not stored either
    assert (await cache.get(line))[0] is None
    _, fresh = await cache.get(line)
    await cache.put(line.fenced(fresh), answer)
    assert (await cache.get(line))[0] is not None
    assert line.fenced(fresh).retried().fence is None  # the next attempt reads it again


def test_a_cached_line_is_priced_by_the_usage_stored_beside_an_answer_without_one() -> None:
    """A streamed answer stored without usage keeps an estimate beside it (as the cache stage
    prices its hits); a batch line served from it saves that much, and the client's body is
    not given the estimate."""
    from thrifty_core.config import parse_config
    from thrifty_core.prices import Usage
    from thrifty_gateway.services.batching.direct import cached
    from thrifty_gateway.services.cache.entry import CachedAnswer
    from thrifty_gateway.state import build_catalog, build_routes

    config = parse_config(
        {
            "providers": [{"name": "p", "baseUrl": "http://x/v1"}],
            "routes": [{"name": "gpt-4o", "targets": [{"provider": "p", "model": "gpt-4o"}]}],
        }
    )
    route, catalog = build_routes(config)["gpt-4o"], build_catalog(config)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    line = Line(batch_id="b", custom_id="c", endpoint="chat", body=body, tenant="t")
    answer = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}],
    }
    usage = {"prompt_tokens": 1000, "completion_tokens": 2000, "total_tokens": 3000}
    entry = CachedAnswer(body=answer, tenant="t", route="gpt-4o", model="gpt-4o", usage=usage)
    result = cached(line, entry, catalog, route)
    expected = catalog.cost("gpt-4o", Usage(prompt_tokens=1000, completion_tokens=2000))
    assert result.saved_usd == pytest.approx(expected) and expected > 0
    assert (result.prompt_tokens, result.completion_tokens) == (1000, 2000)
    assert "usage" not in (result.body or {})


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"model": "m", "messages": ["hi", 5]}, "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": 5}, "tools"),
        ({"model": "m", "messages": [{"role": 5, "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [], "x": "DEEP"}, "deeply"),
    ],
)
def test_batch_lines_get_the_checks_a_direct_request_gets(body: dict[str, Any], why: str) -> None:
    """A line a direct request would be refused for is refused at validation, not failed later
    in the worker (where it tripped the provider's circuit breaker)."""
    from thrifty_gateway.services.batching.validate import LineError, _check_line

    line = {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions", "body": body}
    # (orjson cannot write the deep one: that is the point; spliced in as text)
    raw = orjson.dumps(line).replace(b'"DEEP"', b"[" * 260 + b"]" * 260)
    got = _check_line(1, raw, None, set())
    assert isinstance(got, LineError) and got.code == "invalid_body" and why in got.message
    ok = dict(line, body={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert not isinstance(_check_line(1, orjson.dumps(ok), None, set()), LineError)


def test_batch_metadata_has_openais_limits() -> None:
    from thrifty_core.errors import InvalidRequestError
    from thrifty_gateway.services.batching.validate import check_metadata

    check_metadata(None)
    check_metadata({f"k{i}": "v" * 512 for i in range(16)})
    for bad in (
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
        {"k": 5},
        ["k"],
    ):
        with pytest.raises(InvalidRequestError) as refused:
            check_metadata(bad)
        assert refused.value.param == "metadata"


async def test_a_batch_output_is_written_past_the_upload_cap(tmp_path: Path) -> None:
    """Another tenant's uploads filled the store: the output of a batch whose lines were run
    and paid for is still written (it was refused, and the batch stuck in finalizing)."""
    store = FilesystemStore(tmp_path, max_total_bytes=100)
    await store.put(b"x" * 90, filename="big", purpose="user_data", tenant="a")
    with pytest.raises(StoreFullError):
        await store.put(b"y" * 20, filename="in.jsonl", purpose="batch", tenant="b")
    meta = await store.put(
        b"z" * 50, filename="out.jsonl", purpose="batch_output", tenant="b", over_cap=True
    )
    assert await store.read(meta.id) == b"z" * 50


def test_bounded_lines_never_hold_an_overlong_line_whole() -> None:
    """Lines up to the cap come back as read (newline included); a longer one is None and its
    rest is skipped in small reads (the next line is intact)."""
    import io

    from thrifty_gateway.services.batching.validate import bounded_lines

    data = b"0123456789\n01234567890\n" + b"x" * 50 + b"\nshort\n" + b"0123456789A"
    assert list(bounded_lines(io.BytesIO(data), 10)) == [
        b"0123456789\n",
        None,
        None,
        b"short\n",
        None,
    ]
    assert list(bounded_lines(io.BytesIO(b"0123456789"), 10)) == [b"0123456789"]
    assert list(bounded_lines(io.BytesIO(b""), 10)) == []


def test_a_retry_backs_off_exponentially_within_its_bounds() -> None:
    from thrifty_gateway.services.batching.provider import retry_delay

    for step, top in ((1, 30.0), (2, 60.0), (3, 120.0), (10, 900.0), (50, 900.0)):
        delays = [retry_delay(step, 30.0, 900.0) for _ in range(50)]
        assert all(top * 0.8 <= d <= top for d in delays), (step, delays)


def test_a_failed_jobs_errors_are_read_as_openai_writes_them() -> None:
    from thrifty_gateway.services.batching.provider import JobState, job_errors

    errors = {
        "object": "list",
        "data": [
            {"code": "token_limit_exceeded", "message": "x" * 1000, "param": None, "line": None},
            {"code": "invalid_value", "message": "bad", "param": "body.model", "line": 3},
            "junk",
        ],
    }
    parsed = job_errors(errors)
    assert [e.code for e in parsed] == ["token_limit_exceeded", "invalid_value"]
    assert len(parsed[0].message) == 300  # bounded
    state = JobState("failed", None, None, parsed)
    assert [e.code for e in state.job_errors()] == ["token_limit_exceeded"]
    assert state.line_errors()[3].param == "body.model"
    assert job_errors(None) == ()


def test_a_line_keeps_its_backoff_and_a_quota_wait_is_not_an_attempt() -> None:
    line = Line("b", "c", "chat", {"model": "m"})
    later = line.retried(not_before=123.5)
    assert later.attempt == 2 and later.not_before == 123.5 and later.waits == 0
    waited = line.retried(not_before=99.0, count=False).retried(not_before=100.0, count=False)
    assert waited.attempt == 1 and waited.waits == 2
    fields = {
        k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in waited.fields().items()
    }
    again = Line.from_fields(fields)
    assert (again.not_before, again.waits, again.attempt) == (100.0, 2, 1)
    assert Line.from_json(waited.to_json()).waits == 2
    assert (
        Line.from_fields(
            {
                k.encode(): v if isinstance(v, bytes) else v.encode()
                for k, v in line.fields().items()
            }
        ).not_before
        is None
    )


def test_the_queues_retry_backoff_reaches_its_workers() -> None:
    """A BatchQueue's `retries.backoffSeconds` / `maxBackoffSeconds` set the workers' waits
    between attempts; the reclaim idle time defaults to twice the flush window (>= 60 s)."""
    spec = BatchQueueSpec.model_validate(
        {"flushWindowSeconds": 300, "retries": {"backoffSeconds": 5, "maxBackoffSeconds": 120}}
    )
    options = worker_options(BatchConfig(spec=spec), "w1")
    assert (options.retry_backoff_seconds, options.retry_backoff_max_seconds) == (5.0, 120.0)
    assert options.consumer == "w1" and options.reclaim_idle_seconds == 600.0
    defaults = worker_options(BatchConfig(), "w2", reclaim_idle_seconds=90.0, sweep_seconds=0.5)
    assert (defaults.retry_backoff_seconds, defaults.retry_backoff_max_seconds) == (30.0, 900.0)
    assert (defaults.reclaim_idle_seconds, defaults.sweep_seconds) == (90.0, 0.5)


def test_a_backoff_longer_than_its_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="backoffSeconds must be <= maxBackoffSeconds"):
        BatchQueueSpec.model_validate({"retries": {"backoffSeconds": 600, "maxBackoffSeconds": 60}})


def test_only_lines_answered_without_a_call_are_unrun() -> None:
    """Unrun lines (their batch stopped, expired or vanished; an unknown model) are no request
    in the ledger; lines the provider answered or that failed on the way are."""
    from thrifty_gateway.services.batching.model import Result

    for code in ("batch_cancelled", "batch_expired", "batch_failed", "batch_missing"):
        assert Result("r", None, None, code, "x").unrun
    assert Result("r", None, None, "model_not_found", "x").unrun
    assert not Result("r", 500, {"error": {}}).unrun
    assert not Result("r", 200, {}).unrun
    assert not Result("r", None, None, "provider_job_failed", "x").unrun
    assert not Result("r", None, None, "batch_expired", "x", cost_usd=0.1).unrun
