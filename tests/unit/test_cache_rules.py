"""Eligibility, client directives, SSE replay and the in-process exact store."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from thrifty_core.api.cachepolicy import GUARD_CHECKS, Eligibility
from thrifty_core.errors import InvalidRequestError
from thrifty_gateway.services.cache.eligibility import (
    answer_ineligible,
    answer_replayable,
    effective_threshold,
    parse_directives,
    request_ineligible,
)
from thrifty_gateway.services.cache.entry import CachedAnswer, Codec
from thrifty_gateway.services.cache.exact import MemoryExactStore
from thrifty_gateway.services.cache.replay import replay_chunks, split_content
from thrifty_gateway.services.cache.selector import Selector
from thrifty_gateway.services.cache.semantic import Candidate
from thrifty_gateway.services.cache.stage import Lookup, shortlist
from thrifty_gateway.services.sse import StreamAssembler

RULES = Eligibility()


def answer(content: str | None = "Paris.", finish: str = "stop", **msg: Any) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **msg},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def test_request_eligibility() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    assert request_ineligible({"messages": msgs}, RULES) is None
    assert request_ineligible({"messages": msgs, "temperature": 1.5}, RULES) == "temperature"
    # No temperature (or null) samples at the provider's default, 1.0: a policy caching only
    # deterministic requests must not cache it.
    greedy = Eligibility(max_temperature=0)
    assert request_ineligible({"messages": msgs}, greedy) == "temperature"
    assert request_ineligible({"messages": msgs, "temperature": None}, greedy) == "temperature"
    assert request_ineligible({"messages": msgs, "temperature": 0}, greedy) is None
    assert request_ineligible({"messages": msgs}, RULES) is None  # 1.0 <= the default 1.0
    assert request_ineligible({"messages": msgs, "n": 3}, RULES) == "n"
    assert request_ineligible({"messages": msgs, "n": 2.0}, RULES) == "n"
    assert request_ineligible({"messages": msgs, "n": 1.0}, RULES) is None
    assert request_ineligible({"messages": msgs, "tools": [{"type": "function"}]}, RULES) == "tools"
    tool_turn = [*msgs, {"role": "tool", "content": "1", "tool_call_id": "a"}]
    assert request_ineligible({"messages": tool_turn}, RULES) == "tools"
    allowing = Eligibility(max_temperature=2, cache_tool_calls=True, cache_multiple_choices=True)
    assert request_ineligible({"messages": tool_turn, "n": 3, "temperature": 1.5}, allowing) is None
    no_stream = Eligibility(cache_streaming=False)
    assert request_ineligible({"messages": msgs, "stream": True}, no_stream) == "stream"


def test_answer_eligibility() -> None:
    assert answer_ineligible(200, answer(), RULES) is None
    assert answer_ineligible(500, answer(), RULES) == "error"
    assert answer_ineligible(502, None, RULES) == "error"
    assert answer_ineligible(200, {"error": {"message": "x"}}, RULES) == "error"
    assert answer_ineligible(200, answer(finish="length"), RULES) == "truncated"
    assert answer_ineligible(200, answer(finish="content_filter"), RULES) == "unfinished"
    unfinished = answer()
    unfinished["choices"][0]["finish_reason"] = None
    assert answer_ineligible(200, unfinished, RULES) == "unfinished"
    assert answer_ineligible(200, answer(refusal="I can't help."), RULES) == "refusal"
    assert answer_ineligible(200, answer(content=""), RULES) == "empty"
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    tool_answer = answer(content=None, finish="tool_calls", tool_calls=calls)
    assert answer_ineligible(200, tool_answer, RULES) == "tools"
    assert answer_ineligible(200, tool_answer, Eligibility(cache_tool_calls=True)) is None


def test_answers_a_hit_could_not_reproduce_are_not_stored() -> None:
    """A streamed hit replays text content and tool calls: list content (it failed the replay
    with a 500), reasoning text, annotations or audio would be lost or break it."""
    # Fields a provider sends empty are fine (OpenAI: refusal null, annotations []; Mistral's
    # prefix false; a proxy's object of nulls).
    assert answer_ineligible(200, answer(refusal=None, annotations=[], audio=None), RULES) is None
    quiet = answer(prefix=False, provider_specific_fields={"refusal": None, "citations": []})
    assert answer_ineligible(200, quiet, RULES) is None
    parts: Any = [{"type": "text", "text": "Hello"}]
    assert answer_ineligible(200, answer(content=parts), RULES) == "unreplayable"
    # Entries stored before this was checked are not served either (lookups check this).
    assert not answer_replayable(answer(content=parts))
    assert answer_replayable(answer()) and answer_replayable(answer(content=None, tool_calls=[]))
    reasoning = answer(reasoning_content="First, the fee table...")
    assert answer_ineligible(200, reasoning, RULES) == "unreplayable"
    cited = answer(annotations=[{"type": "url_citation", "url_citation": {"url": "https://x"}}])
    assert answer_ineligible(200, cited, RULES) == "unreplayable"
    # A stream's reasoning deltas are assembled, so its answer is refused the same way.
    assembler = StreamAssembler()
    deltas = ({"role": "assistant", "reasoning_content": "Think"}, {"reasoning_content": "ing"})
    for delta in deltas:
        assembler.add({"id": "c", "choices": [{"index": 0, "delta": delta}]})
    assembler.add({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]})
    streamed = assembler.completion()
    assert streamed["choices"][0]["message"]["reasoning_content"] == "Thinking"
    assert answer_ineligible(200, streamed, RULES) == "unreplayable"


def test_the_stream_assembler_merges_fragments_and_knows_what_it_cannot_assemble() -> None:
    """Object deltas arrive in pieces (audio: id, then transcript and data in parts); content
    given as a list of parts cannot be assembled into a text answer (it raised mid-stream)."""
    assembler = StreamAssembler()
    for delta in (
        {"role": "assistant", "audio": {"id": "a1", "transcript": "Hel"}},
        {"audio": {"transcript": "lo", "data": "AAA"}},
        {"audio": {"data": "BBB", "expires_at": 7}},
    ):
        assembler.add({"choices": [{"index": 0, "delta": delta}]})
    audio = assembler.completion()["choices"][0]["message"]["audio"]
    assert audio == {"id": "a1", "transcript": "Hello", "data": "AAABBB", "expires_at": 7}
    assert not assembler.broken
    parts = StreamAssembler()
    parts.add({"choices": [{"index": 0, "delta": {"content": [{"type": "text", "text": "x"}]}}]})
    assert parts.broken
    # A custom tool's call (free-form input, no function) was assembled as a function call
    # with no name and no arguments, and could be stored so.
    custom = StreamAssembler()
    call = {"index": 0, "id": "c1", "type": "custom", "custom": {"name": "sh", "input": "ls"}}
    custom.add({"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [call]}}]})
    assert custom.broken


def test_a_custom_tool_call_is_not_stored_a_streamed_hit_would_lose_it() -> None:
    custom = {"id": "c1", "type": "custom", "custom": {"name": "sh", "input": "ls"}}
    function = {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert not answer_replayable(answer(content=None, tool_calls=[custom]))
    assert not answer_replayable(answer(content=None, tool_calls=[function, custom]))
    assert answer_replayable(answer(content=None, tool_calls=[function]))
    assert (
        answer_ineligible(
            200, answer(content=None, tool_calls=[custom]), Eligibility(cache_tool_calls=True)
        )
        == "unreplayable"
    )


def test_directives_and_threshold_tightening() -> None:
    d = parse_directives(
        {
            "cache-control": "no-store, max-age=60",
            "x-thrifty-cache-threshold": "0.97",
            "x-thrifty-cache-tags": "faq, v2,faq,",
        }
    )
    assert (d.no_cache, d.no_store, d.max_age, d.threshold) == (False, True, 60, 0.97)
    assert d.tags == ("faq", "v2")
    assert parse_directives({"cache-control": "no-cache"}).no_cache
    assert parse_directives({"pragma": "no-cache"}).no_cache  # HTTP/1.0 clients
    assert parse_directives({"x-thrifty-cache": "no-store"}).no_store
    assert parse_directives({"cache-control": "max-age=0"}).no_cache
    # Quoted and spaced values count; one that is not delta-seconds means "no lookup";
    # repeated, the strictest wins.
    assert parse_directives({"cache-control": 'max-age="30"'}).max_age == 30
    assert parse_directives({"cache-control": "max-age = 30"}).max_age == 30
    for bad in ("max-age=1.5", "max-age=abc", "max-age=-5", "max-age="):
        assert parse_directives({"cache-control": bad}).no_cache, bad
    both = parse_directives({"cache-control": "max-age=1, max-age=100000"})
    assert both.max_age == 1
    # Sent on several lines, a header's values count together (RFC 9110, 5.3).
    from starlette.datastructures import Headers

    lines = Headers(
        raw=[
            (b"cache-control", b"max-age=600"),
            (b"cache-control", b"no-store"),
            (b"x-thrifty-cache-tags", b"doc-1"),
            (b"x-thrifty-cache-tags", b"doc-2"),
        ]
    )
    split = parse_directives(lines)
    assert (split.no_store, split.max_age, split.tags) == (True, 600, ("doc-1", "doc-2"))
    with pytest.raises(InvalidRequestError):  # two thresholds: which one?
        parse_directives(
            Headers(
                raw=[(b"x-thrifty-cache-threshold", b"0.9"), (b"x-thrifty-cache-threshold", b"1")]
            )
        )
    assert effective_threshold(0.9, 0.97) == 0.97
    assert effective_threshold(0.9, 0.5) == 0.9  # never loosened
    assert effective_threshold(0.9, None) == 0.9
    assert effective_threshold(0.9, float("nan")) == 0.9


@pytest.mark.parametrize(
    "headers",
    [
        {"x-thrifty-cache-tags": "faq,user@example.com"},  # not a storable tag
        {"x-thrifty-cache-tags": "bad tag"},
        {"x-thrifty-cache-tags": ",".join(f"t{i}" for i in range(9))},  # more than 8
        {"x-thrifty-cache-tags": "x" * 65},
        {"x-thrifty-cache-threshold": "high"},
        {"x-thrifty-cache-threshold": "nan"},
        {"x-thrifty-cache-threshold": "1.5"},
    ],
)
def test_cache_headers_that_cannot_be_honoured_are_refused(headers: dict[str, str]) -> None:
    """Dropping a tag would store the entry where a purge by that tag never finds it; an
    unusable threshold would silently loosen what the client asked for."""
    with pytest.raises(InvalidRequestError) as refused:
        parse_directives(headers)
    assert refused.value.code == "invalid_cache_header"
    assert refused.value.param == next(iter(headers))


def test_replay_is_a_valid_stream_of_the_same_answer() -> None:
    text = "The capital of France is Paris, a city on the Seine with many museums."
    completion = answer(content=text)
    chunks = replay_chunks(completion, include_usage=True)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(chunks) > 4  # content in small pieces
    assert chunks[-1]["usage"]["total_tokens"] == 7 and chunks[-1]["choices"] == []
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assembler = StreamAssembler()
    for chunk in chunks:
        assembler.add(orjson.loads(orjson.dumps(chunk)))
    rebuilt = assembler.completion()
    assert rebuilt["choices"][0]["message"]["content"] == text
    assert "".join(split_content(text, 5)) == text
    # Text without spaces (CJK, minified JSON) is cut too: small chunks, nothing lost.
    for dense in ("存款利率" * 750, '{"a":[1,2,3],"b":"x"}' * 250):
        pieces = list(split_content(dense))
        assert "".join(pieces) == dense
        assert len(pieces) > 50 and max(len(piece) for piece in pieces) <= 2 * 24
    no_usage = replay_chunks(completion, include_usage=False)
    assert all("usage" not in c for c in no_usage)


def test_replay_carries_logprobs_token_by_token() -> None:
    tokens = [
        {"token": t, "logprob": -0.1 * i, "bytes": list(t.encode()), "top_logprobs": []}
        for i, t in enumerate(["Paris", " is", " the", " capital", "."])
    ]
    logprobs: dict[str, Any] = {"content": tokens, "refusal": None}
    completion: dict[str, Any] = {
        "id": "c",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Paris is the capital."},
                "logprobs": logprobs,
                "finish_reason": "stop",
            }
        ],
    }
    chunks = replay_chunks(completion, include_usage=False)
    carried = [c["choices"][0]["logprobs"] for c in chunks if c["choices"][0]["logprobs"]]
    assert [item for lp in carried for item in lp["content"]] == tokens
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Paris is the capital."
    # Tokens that do not spell the content (edited answer): plain chunks, no logprobs.
    logprobs["content"] = tokens[:2]
    plain = replay_chunks(completion, include_usage=False)
    assert all(c["choices"][0]["logprobs"] is None for c in plain)


def test_replay_carries_logprobs_of_characters_split_across_tokens() -> None:
    """An emoji the model emitted as two byte tokens is replayed as one chunk carrying both
    tokens' logprobs (the text of a chunk is whole characters), not without logprobs."""
    wave = "\U0001f44b".encode()  # 4 bytes
    parts = [
        ("Hi", b"Hi"),
        (" ", b" "),
        ("bytes:\\xf0\\x9f", wave[:2]),
        ("bytes:\\x91\\x8b", wave[2:]),
    ]
    tokens = [{"token": t, "logprob": -0.5, "bytes": list(b), "top_logprobs": []} for t, b in parts]
    completion: dict[str, Any] = {
        "id": "c",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi \U0001f44b"},
                "logprobs": {"content": tokens, "refusal": None},
                "finish_reason": "stop",
            }
        ],
    }
    chunks = [c["choices"][0] for c in replay_chunks(completion, include_usage=False)]
    carried = [(c["delta"]["content"], c["logprobs"]["content"]) for c in chunks if c["logprobs"]]
    assert carried == [("Hi", tokens[:1]), (" ", tokens[1:2]), ("\U0001f44b", tokens[2:])]
    # Bytes that do not spell the content, or a token without bytes: plain text, no logprobs.
    for broken in (tokens[:3], [*tokens[:2], {"token": "x", "logprob": 0.0}]):
        completion["choices"][0]["logprobs"]["content"] = broken
        plain = replay_chunks(completion, include_usage=False)
        assert all(c["choices"][0]["logprobs"] is None for c in plain)
        assert (
            "".join(c["choices"][0]["delta"].get("content") or "" for c in plain) == "Hi \U0001f44b"
        )


def test_replay_carries_tool_calls() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]
    chunks = replay_chunks(answer(content=None, finish="tool_calls", tool_calls=calls), False)
    assembler = StreamAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    message = assembler.completion()["choices"][0]["message"]
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert assembler.completion()["choices"][0]["finish_reason"] == "tool_calls"
    # A tool-calls-only answer opens with content null, as the provider streams it (the SDK's
    # stream state then gives content None, not "").
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert message["content"] is None


def test_the_service_tier_and_late_base_fields_survive_a_stream() -> None:
    """Azure opens a stream with a chunk of empty id and model (prompt filter results only):
    the assembled answer takes each field from the first chunk that has it, and a replay of it
    carries the service tier."""
    opening = {
        "id": "",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "",
        "choices": [],
    }
    first = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_1",
        "service_tier": "default",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}],
    }
    last = {**first, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    assembler = StreamAssembler()
    for chunk in (opening, first, last):
        assembler.add(chunk)
    done = assembler.completion()
    assert done["id"] == "chatcmpl-1" and done["model"] == "gpt-4o-mini-2024-07-18"
    assert done["created"] == 1700000000 and done["system_fingerprint"] == "fp_1"
    assert done["service_tier"] == "default"
    replayed = replay_chunks(done, include_usage=False)
    assert {c["service_tier"] for c in replayed} == {"default"}
    assert {c["model"] for c in replayed} == {"gpt-4o-mini-2024-07-18"}


def entry(
    tenant: str = "a", tags: tuple[str, ...] = (), created: float | None = None
) -> CachedAnswer:
    e = CachedAnswer(body=answer(), tenant=tenant, route="r", model="m", tags=tags)
    if created is not None:
        e.created = created
    return e


def test_codec_roundtrip_compressed_and_plain() -> None:
    for compress in (True, False):
        codec = Codec(compress)
        blob = codec.encode(entry(tags=("t",)))
        assert blob.startswith(b"\x28\xb5\x2f\xfd") == compress
        back = Codec(not compress).decode(blob)
        assert back.body == answer() and back.tags == ("t",) and back.usage is None


def test_the_cost_of_an_answer_without_usage_is_kept_by_every_store() -> None:
    """The usage a stream's answer cost when its body carries none (priced on a hit)."""
    from thrifty_gateway.services.cache.semantic import candidate_of, payload_of

    kept = entry()
    kept.usage = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}
    assert Codec().decode(Codec().encode(kept)).usage == kept.usage
    payload = payload_of("tenant:a", "ctx", "q", kept, 60, "ks")
    assert candidate_of(0.99, payload).entry.usage == kept.usage
    assert "usage" not in payload_of("tenant:a", "ctx", "q", entry(), 60, "ks")


def test_memory_store_lru_ttl_and_purge() -> None:
    async def scenario() -> None:
        store = MemoryExactStore(max_entries=2, codec=Codec(), max_entry_bytes=1 << 20)
        await store.put("k1", entry(), ttl=60)
        await store.put("k2", entry(tenant="b"), ttl=60)
        assert await store.get("k1") is not None  # k1 is now most recent
        await store.put("k3", entry(tags=("faq",)), ttl=60)
        assert await store.get("k2") is None and store.evictions == 1
        assert await store.purge(Selector(tag="faq")) == 1
        assert await store.get("k3") is None and await store.get("k1") is not None
        await store.put("old", entry(created=0.0), ttl=60)
        assert await store.purge(Selector(older_than_seconds=3600)) == 1
        assert await store.purge(Selector(tenant="a")) == 1
        assert len(store) == 0
        tiny = MemoryExactStore(max_entries=10, codec=Codec(False), max_entry_bytes=1024)
        await tiny.put("gone", entry(), ttl=0)
        assert await tiny.get("gone") is None
        big = entry()
        big.body = answer(content="x" * 5000)
        assert await tiny.put("big", big, ttl=60) == "too_large"
        assert await tiny.get("big") is None

    asyncio.run(scenario())


def test_a_selector_with_a_gateway_takes_its_entries_and_unlabelled_ones() -> None:
    """The Redis store keeps the labels beside the answer; one stored before the gateway label
    existed reads back with none, and a purge through any gateway takes it."""
    from thrifty_gateway.services.cache.exact import LABELS, _labelled, _labels_of

    mine, other, legacy = entry(), entry(), entry()
    mine.gateway, other.gateway = "ns/one", "ns/two"
    back = _labelled([v.encode() for v in _labels_of(mine)])
    assert back.gateway == "ns/one" and back.tenant == mine.tenant
    old_hash = [v.encode() for v in _labels_of(legacy)][: LABELS.index("gateway")]
    assert _labelled([*old_hash, None]).gateway == ""
    select = Selector(tenant=mine.tenant, gateway="ns/one")
    assert select.matches(mine) and select.matches(legacy) and not select.matches(other)
    assert Selector(tenant=mine.tenant).matches(other)  # no gateway named: every gateway's


def test_memory_store_fences_answers_read_before_a_purge() -> None:
    async def scenario() -> None:
        store = MemoryExactStore(max_entries=10, codec=Codec(), max_entry_bytes=1 << 20)
        found, fence = await store.lookup("k")
        assert found is None and fence == await store.fence()
        await store.purge(Selector(tenant="nobody"))  # any purge advances the fence
        assert await store.put("k", entry(), ttl=60, fence=fence) == "purged"
        assert await store.get("k") is None
        assert await store.put("k", entry(), ttl=60, fence=await store.fence()) == "stored"
        assert await store.put("k2", entry(), ttl=60) == "stored"  # no fence: unconditional
        assert (await store.lookup("k"))[0] is not None

    asyncio.run(scenario())


def _shortlisted(asked: str, cached: list[str], judge: int | None, stale: str = "") -> Lookup:
    found = Lookup()
    candidates = [
        Candidate(score=1.0 - i / 100, query=q, entry=entry()) for i, q in enumerate(cached)
    ]
    shortlist(found, asked, candidates, GUARD_CHECKS, lambda c: c.query != stale, judge)
    return found


def test_the_verifier_judges_at_most_max_candidates_nearest_first() -> None:
    """Only the first `maxCandidates` candidates that pass the checks reach the verifier (a
    candidate further down rarely wins and each costs a verifier pass); rejected and stale ones
    do not count, and neither does the same question, which is never judged."""
    asked = "How do I make pizza dough at home?"
    cached = [
        "How do I make 3 pizza doughs at home?",  # the number check rejects it
        "How can I make pizza dough at home?",
        "How do I make pizza dough in my kitchen?",
        "What is the way to make pizza dough at home?",
    ]
    one = _shortlisted(asked, cached, judge=1)
    assert [c.query for c in one.passed] == [cached[1]] and one.rejected == ["numbers"]
    two = _shortlisted(asked, cached, judge=2, stale=cached[1])
    assert [c.query for c in two.passed] == cached[2:4]
    assert [c.query for c in _shortlisted(asked, cached, judge=None).passed] == cached[1:]
    same = _shortlisted(asked, [f" {asked}\n", *cached[1:]], judge=1)
    assert same.same == [True, False] and len(same.passed) == 2
