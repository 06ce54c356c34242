"""Request helpers of the proxy: body parsing, max_tokens ceiling, cache directives."""

from __future__ import annotations

import pytest

from thrifty_core.errors import InvalidRequestError
from thrifty_gateway.services.pipeline import CacheControl
from thrifty_gateway.services.proxy import _clamp_max_tokens, estimate_usage, parse_body


def test_parse_body_refuses_non_objects() -> None:
    assert parse_body(b'{"model": "m"}') == {"model": "m"}
    with pytest.raises(InvalidRequestError):
        parse_body(b"[1, 2]")
    with pytest.raises(InvalidRequestError):
        parse_body(b"{not json")


def test_max_tokens_ceiling() -> None:
    body: dict[str, object] = {"max_tokens": 5000}
    _clamp_max_tokens(body, 1000)
    assert body == {"max_tokens": 1000}
    body = {"max_completion_tokens": 10}
    _clamp_max_tokens(body, 1000)
    assert body == {"max_completion_tokens": 10}
    body = {}
    _clamp_max_tokens(body, 256)
    assert body == {"max_completion_tokens": 256}  # max_tokens: refused by reasoning models
    body = {}
    _clamp_max_tokens(body, None)
    assert body == {}


def test_estimate_usage_is_about_four_chars_per_token() -> None:
    usage = estimate_usage(
        {"messages": [{"role": "user", "content": "x" * 400}]},
        {"choices": [{"message": {"content": "y" * 200}}]},
    )
    assert 100 <= usage.prompt_tokens <= 120
    assert usage.completion_tokens == 50


def test_cache_control_parse() -> None:
    assert CacheControl.parse({}) == CacheControl()
    cc = CacheControl.parse({"x-thrifty-cache": "no-cache, No-Store"})
    assert cc.no_cache and cc.no_store and not cc.only_if_cached
    # The standard header says the same; only-if-cached too.
    assert CacheControl.parse({"cache-control": "only-if-cached"}).only_if_cached
    assert CacheControl.parse({"cache-control": "no-store"}).no_store
    # Pragma: no-cache counts only when there is no Cache-Control (RFC 9111, 5.4).
    assert CacheControl.parse({"pragma": "no-cache"}).no_cache
    assert not CacheControl.parse({"pragma": "no-cache", "cache-control": "max-age=60"}).no_cache
    assert not CacheControl.parse({"pragma": "x-other"}).no_cache


def nested(depth: int) -> bytes:
    """A chat body with an extra field nesting arrays `depth` levels (the body is one more)."""
    deep = "[" * depth + "]" * depth
    return ('{"model": "m", "messages": [], "x": ' + deep + "}").encode()


def test_parse_body_refuses_nesting_it_could_not_write_back() -> None:
    """orjson reads 1,024 levels but writes 254: a body accepted deeper failed with a 500 when
    forwarded or queued. What is accepted can still be written inside a few more levels."""
    import orjson

    from thrifty_gateway.services.proxy import WRAP_LEVELS

    limit = 255 - WRAP_LEVELS - 1  # the first depth refused; the body's own object is one
    ok = parse_body(nested(limit - 1))
    assert orjson.loads(orjson.dumps({"a": {"b": {"c": ok}}})) == {"a": {"b": {"c": ok}}}
    for depth in (limit, 300, 1000):
        with pytest.raises(InvalidRequestError, match="too deeply"):
            parse_body(nested(depth))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}], "tools": 5}, "tools"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [1]}, "tools"),
        ({"messages": [{"role": "user", "content": "x"}], "functions": True}, "functions"),
        ({"messages": [{"role": 5, "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": {}}]},
            "messages[1].content",
        ),
        ({"messages": "hi"}, "messages"),
        # Sent on, these got a provider's 500 (vLLM, Ollama, the simulator), retried and
        # counted against the target's breaker that every tenant's traffic goes through.
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "assistant", "content": "x", "tool_calls": True}]},
         "messages[0].tool_calls"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}]},
         "messages[0].tool_calls[0]"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "custom", "custom": {"name": "sh"}}]}]},
         "messages[0].tool_calls[0]"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": ["function"], "function": {"name": "f", "arguments": ""}}]}]},
         "messages[0].tool_calls[0]"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "tool", "content": "42", "tool_call_id": 7}]},
         "messages[0].tool_call_id"),
        ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": "x", "name": 3}]}, "messages[0].name"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "false"}, "stream"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": True}, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10.5}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "seed": "x"}, "seed"),
        ({"messages": [{"role": "user", "content": "x"}], "logit_bias": [1]}, "logit_bias"),
        ({"messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
        ({"messages": [{"role": "user", "content": "x"}], "tool_choice": 7}, "tool_choice"),
    ],
)  # fmt: skip
def test_chat_fields_stages_read_are_type_checked(body: dict[str, object], param: str) -> None:
    from thrifty_gateway.services.proxy import check_chat_shape

    with pytest.raises(InvalidRequestError) as refused:
        check_chat_shape(body)
    assert refused.value.param == param and refused.value.status == 400


def test_well_typed_chat_requests_pass_the_shape_check() -> None:
    from thrifty_gateway.services.proxy import check_chat_shape

    check_chat_shape(
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "x"}]},
                {"role": "assistant", "content": None, "tool_calls": []},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        },
                        # a custom tool's call (free-form input, no function): refused before
                        {"id": "c2", "type": "custom", "custom": {"name": "sh", "input": "ls"}},
                    ],
                },
                {"role": "tool", "content": "42", "tool_call_id": "c1", "name": "f"},
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "stream": False,
            "temperature": 0,
            "top_p": 0.5,
            "max_tokens": 10,
            "seed": None,
            "stop": ["\n"],
            "logit_bias": {"50256": -100},
            "tool_choice": "auto",
            "logprobs": True,
            "top_logprobs": 2,
            "user": "u",
        }
    )
    check_chat_shape({"messages": [{"role": "user", "content": "x"}], "stop": "END"})


def test_a_stray_semicolon_does_not_hide_a_cache_directive() -> None:
    assert CacheControl.parse({"cache-control": "private, no-store;"}).no_store
    assert CacheControl.parse({"cache-control": "no-cache;max-age=5"}).no_cache


def test_the_defer_header_is_yes_no_or_a_400() -> None:
    from thrifty_gateway.services.pipeline import wants_defer

    def asks(value: str | None) -> bool:
        return wants_defer({} if value is None else {"x-thrifty-defer": value})

    assert asks("true") and asks(" Yes ") and asks("1")
    assert not asks(None) and not asks("0") and not asks("false")
    with pytest.raises(InvalidRequestError) as refused:
        asks("maybe")
    assert refused.value.param == "x-thrifty-defer"


@pytest.mark.parametrize(
    "since",
    [
        "nan",
        "inf",
        "-inf",
        "1e300",
        "99999999999999999999",
        "-5",
        "9999-12-31T23:59:59-14:00",
        "0001-01-01T00:00:00+14:00",
    ],
)
def test_since_out_of_range_is_refused(since: str) -> None:
    from thrifty_gateway.services.ledger import parse_since

    with pytest.raises(ValueError):
        parse_since(since)


def test_since_in_range_parses() -> None:
    from thrifty_gateway.services.ledger import parse_since

    assert parse_since("1700000000") == 1700000000.0
    assert parse_since("2026-01-01T00:00:00Z") == 1767225600.0
    assert parse_since(None) is None


def test_a_provider_error_is_passed_on_with_its_param_and_code() -> None:
    from thrifty_core.errors import UpstreamStatusError

    err = UpstreamStatusError(
        "bad",
        status=400,
        type_="invalid_request_error",
        param="temperature",
        code=None,
        passed_on=True,
    )
    assert err.body()["error"] == {
        "message": "bad",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": None,
    }
    assert UpstreamStatusError("x", status=400).code == "upstream_error"
