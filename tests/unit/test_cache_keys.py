"""Exact keys cover every answer-changing field and the tenant scope; the semantic split
keeps everything but the final user turn in an exact context hash."""

from __future__ import annotations

from typing import Any

import pytest

from thrifty_gateway.services.cache.keys import (
    canonical_request,
    exact_key,
    scope_of,
    semantic_key,
)

BASE: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "temperature": 0.2,
}


def key(body: dict[str, Any], tenant: str = "a", model: str = "sim/gpt-4o-mini") -> str:
    return exact_key(canonical_request(body, model), "p/v1", scope_of(tenant, "tenant"))


CHANGES: list[tuple[str, Any]] = [
    ("temperature", 0.3),
    ("top_p", 0.5),
    ("n", 2),
    ("seed", 7),
    ("stop", ["\n"]),
    ("max_tokens", 10),
    ("max_completion_tokens", 10),
    ("logit_bias", {"123": -100}),
    ("logprobs", True),
    ("top_logprobs", 2),
    ("presence_penalty", 0.5),
    ("frequency_penalty", 0.5),
    ("response_format", {"type": "json_object"}),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "none"),
    ("parallel_tool_calls", False),
    ("reasoning_effort", "high"),
    ("some_future_field", 1),
]


@pytest.mark.parametrize(("field", "value"), CHANGES)
def test_each_answer_changing_field_changes_the_key(field: str, value: Any) -> None:
    assert key({**BASE, field: value}) != key(BASE)


def test_messages_system_and_roles_change_the_key() -> None:
    other_system = {
        **BASE,
        "messages": [{"role": "system", "content": "Be verbose."}, BASE["messages"][1]],
    }
    no_system = {**BASE, "messages": [BASE["messages"][1]]}
    tool_turn = {
        **BASE,
        "messages": [*BASE["messages"], {"role": "tool", "content": "x", "tool_call_id": "1"}],
    }
    keys = {key(BASE), key(other_system), key(no_system), key(tool_turn)}
    assert len(keys) == 4


def test_tenant_model_and_keyspace_change_the_key() -> None:
    canonical = canonical_request(BASE, "sim/gpt-4o-mini")
    assert key(BASE, tenant="a") != key(BASE, tenant="b")
    assert key(BASE, model="sim/gpt-4o") != key(BASE)
    assert exact_key(canonical, "p/v1", "tenant:a") != exact_key(canonical, "p/v2", "tenant:a")
    assert scope_of("a", "shared") == scope_of("b", "shared") == "shared"
    # Within a gateway when it names one: gateways sharing a policy share nothing.
    assert scope_of("a", "tenant", "ns/one") == "gateway:ns/one:tenant:a"
    assert scope_of("a", "shared", "ns/one") != scope_of("a", "shared", "ns/two")
    assert scope_of("a", "tenant", "ns/one") != scope_of("a", "tenant")


def test_transport_fields_and_formatting_do_not_change_the_key() -> None:
    same = {
        **BASE,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u1",
        "model": "alias-name",
        "temperature": 0.2,
    }
    assert key(same) == key(BASE)
    ints = {**BASE, "temperature": 1}
    floats = {**BASE, "temperature": 1.0}
    assert key(ints) == key(floats)
    parts = {
        **BASE,
        "messages": [
            BASE["messages"][0],
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is the capital of France?"}],
            },
        ],
    }
    assert key(parts) == key(BASE)
    reordered = dict(reversed(list(BASE.items())))
    assert key(reordered) == key(BASE)
    # null is the field's absence; the deprecated max_tokens is max_completion_tokens; the
    # provider's own prompt-cache key and safety identifier change no answer
    assert key({**BASE, "seed": None, "n": None, "tools": None}) == key(BASE)
    assert key({**BASE, "max_tokens": 10}) == key({**BASE, "max_completion_tokens": 10})
    both = {**BASE, "max_tokens": 10, "max_completion_tokens": 20}
    assert key(both) != key({**BASE, "max_completion_tokens": 20})
    assert key({**BASE, "prompt_cache_key": "k1", "safety_identifier": "u1"}) == key(BASE)


def test_numbers_beyond_64_bits_are_keyed_not_refused() -> None:
    """1e20 is an integral float orjson cannot write as an int: it keeps its float form (a
    JSON schema `maximum`, a huge seed), and 1e20 still differs from 2e20."""
    schema = {"type": "json_schema", "json_schema": {"schema": {"maximum": 1e20}}}
    big = {**BASE, "response_format": schema, "seed": 1e20}
    assert key(big) == key(dict(big))
    bigger = {**big, "seed": 2e20}
    assert key(bigger) != key(big)
    assert key({**BASE, "seed": 3.0}) == key({**BASE, "seed": 3})


def test_key_is_full_sha256_hex() -> None:
    k = key(BASE)
    assert len(k) == 64
    int(k, 16)


def test_semantic_split_embeds_only_the_final_user_turn() -> None:
    canonical = canonical_request(BASE, "sim/gpt-4o-mini")
    sem = semantic_key(canonical, "p/v1")
    assert sem is not None
    assert sem.query == "What is the capital of France?"
    paraphrase = {
        **BASE,
        "messages": [BASE["messages"][0], {"role": "user", "content": "France's capital?"}],
    }
    other = semantic_key(canonical_request(paraphrase, "sim/gpt-4o-mini"), "p/v1")
    assert other is not None and other.context == sem.context
    for change in (
        {"temperature": 0.9},
        {"messages": [{"role": "system", "content": "Be verbose."}, BASE["messages"][1]]},
    ):
        changed = semantic_key(canonical_request({**BASE, **change}, "sim/gpt-4o-mini"), "p/v1")
        assert changed is not None and changed.context != sem.context
    other_model = semantic_key(canonical_request(BASE, "sim/gpt-4o"), "p/v1")
    assert other_model is not None and other_model.context != sem.context


def test_no_semantic_key_without_a_final_text_user_turn() -> None:
    tool_last = {
        **BASE,
        "messages": [*BASE["messages"], {"role": "tool", "content": "42", "tool_call_id": "1"}],
    }
    image = {
        **BASE,
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
        ],
    }
    assert semantic_key(canonical_request(tool_last, "m"), "k") is None
    assert semantic_key(canonical_request(image, "m"), "k") is None
