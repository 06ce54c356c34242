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
    assert body == {"max_tokens": 256}
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
