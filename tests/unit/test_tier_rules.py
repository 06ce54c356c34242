"""The tier rule engine: request features -> the cheapest matching tier."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from thrifty_core.api.costcontrol import Tiering, TierRule
from thrifty_gateway.services.tiering.features import extract_features, parse_tags
from thrifty_gateway.services.tiering.rules import (
    cheapest_able,
    choose_tier,
    needs_difficulty,
    rule_matches,
)


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def tiering(**rules: Any) -> Tiering:
    return Tiering.model_validate(
        {
            "tiers": [
                {"name": "nano", "targets": [{"provider": "p", "model": "n"}], "rules": [rules]},
                {
                    "name": "mini",
                    "targets": [{"provider": "p", "model": "m"}],
                    "rules": [{"maxPromptTokens": 2000}],
                },
            ]
        }
    )


def test_features_read_size_tools_images_json_tags_and_user_text() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "x" * 400},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in THIS picture?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                ],
            },
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "response_format": {"type": "json_object"},
        "metadata": {"team": "search"},
    }
    f = extract_features(body, {"x-thrifty-tags": "priority=low, bad, =x"})
    assert f.prompt_tokens >= 100
    assert f.has_tools and f.has_images and f.has_response_format
    assert f.tags == {"team": "search", "priority": "low"}
    assert f.user_text == "what is in this picture?"


def test_plain_request_has_no_tools_images_or_json() -> None:
    f = extract_features(chat("hi"), {})
    assert (f.has_tools, f.has_images, f.has_response_format) == (False, False, False)
    assert f.prompt_tokens < 10


def test_parse_tags_ignores_malformed_pieces() -> None:
    assert parse_tags("a=1,b,=c, d = 2 ") == {"a": "1", "d": "2"}
    assert parse_tags(None) == {}


@pytest.mark.parametrize(
    ("rule", "body", "headers", "expected"),
    [
        ({"maxPromptTokens": 50}, chat("short question"), {}, True),
        ({"maxPromptTokens": 50}, chat("word " * 400), {}, False),
        ({"minPromptTokens": 50}, chat("short"), {}, False),
        ({"hasTools": False}, chat("hi", tools=[{"type": "function"}]), {}, False),
        ({"hasTools": True}, chat("hi", tools=[{"type": "function"}]), {}, True),
        ({"hasImages": False}, chat("hi"), {}, True),
        ({"hasResponseFormat": True}, chat("hi"), {}, False),
        ({"metadata": {"tier": "cheap"}}, chat("hi"), {"x-thrifty-tags": "tier=cheap"}, True),
        ({"metadata": {"tier": "cheap"}}, chat("hi", metadata={"tier": "gold"}), {}, False),
        ({"keywordsAny": ["Translate"]}, chat("please translate this"), {}, True),
        ({"keywordsAny": ["translate"]}, chat("prove this theorem"), {}, False),
        ({"keywordsNone": ["prove"]}, chat("Prove this theorem"), {}, False),
        ({}, chat("anything"), {}, True),
    ],
)
def test_rule_conditions(
    rule: dict[str, Any], body: dict[str, Any], headers: dict[str, str], expected: bool
) -> None:
    parsed = TierRule.model_validate(rule)
    assert rule_matches(parsed, extract_features(body, headers)) is expected


def test_all_conditions_of_a_rule_must_hold() -> None:
    rule = TierRule.model_validate({"maxPromptTokens": 100, "keywordsAny": ["summarize"]})
    assert rule_matches(rule, extract_features(chat("summarize this"), {}))
    assert not rule_matches(rule, extract_features(chat("summarize " * 200), {}))
    assert not rule_matches(rule, extract_features(chat("hello"), {}))


def test_difficulty_rule_needs_a_score_under_the_bound() -> None:
    rule = TierRule(max_difficulty=0.3)
    features = extract_features(chat("hi"), {})
    assert rule_matches(rule, features, 0.1)
    assert not rule_matches(rule, features, 0.5)
    assert not rule_matches(rule, features, None)  # no classifier: never vouches for easy


def test_choose_first_matching_tier_else_the_route() -> None:
    t = tiering(maxPromptTokens=40, hasTools=False)
    assert choose_tier(t, extract_features(chat("easy one"), {})) == 0
    tools = chat("easy one", tools=[{"type": "function"}])
    assert choose_tier(t, extract_features(tools, {})) == 1
    assert choose_tier(t, extract_features(chat("word " * 4000), {})) == 2  # the route itself
    assert not needs_difficulty(t)
    assert needs_difficulty(tiering(maxDifficulty=0.2))


def test_tier_without_rules_takes_everything() -> None:
    t = Tiering.model_validate(
        {"tiers": [{"name": "cheap", "targets": [{"provider": "p", "model": "n"}]}]}
    )
    assert choose_tier(t, extract_features(chat("word " * 4000), {})) == 0


def test_tier_names_are_unique_and_route_is_reserved() -> None:
    target = [{"provider": "p", "model": "n"}]
    with pytest.raises(ValidationError, match="unique"):
        Tiering.model_validate(
            {"tiers": [{"name": "a", "targets": target}, {"name": "a", "targets": target}]}
        )
    with pytest.raises(ValidationError, match="reserved"):
        Tiering.model_validate({"tiers": [{"name": "route", "targets": target}]})


def test_file_and_audio_parts_are_heavy_non_text_input() -> None:
    """A 2 MB PDF or an audio clip is neither 9 tokens nor text: it counts as an image
    (`hasImages: false` tiers cannot take it) and by its size against `maxPromptTokens`."""
    pdf = {
        "type": "file",
        "file": {
            "filename": "c.pdf",
            "file_data": "data:application/pdf;base64," + "A" * 2_000_000,
        },
    }
    audio = {"type": "input_audio", "input_audio": {"data": "A" * 500_000, "format": "wav"}}
    by_id = {"type": "file", "file": {"file_id": "file-abc"}}
    for part, floor in ((pdf, 30_000), (audio, 8_000), (by_id, 1_000)):
        body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "sum"}, part]}]}
        features = extract_features(body, {})
        assert features.has_images, part["type"]
        assert features.prompt_tokens >= floor, (part["type"], features.prompt_tokens)
    t = tiering(maxPromptTokens=4000)
    assert (
        choose_tier(t, extract_features({"messages": [{"role": "user", "content": [pdf]}]}, {}))
        == 2
    )


def test_non_ascii_text_is_not_a_quarter_of_its_size() -> None:
    """16,000 CJK characters are about 16,000 tokens, not 4,000; ASCII stays ~4 a token."""
    assert 15_000 <= extract_features(chat("合同条款" * 4000), {}).prompt_tokens <= 17_000
    assert 990 <= extract_features(chat("abcd" * 1000), {}).prompt_tokens <= 1010
    mixed = extract_features(chat("é" * 3000), {}).prompt_tokens  # 2 bytes each
    assert 1_500 <= mixed <= 2_500


def test_the_cheapest_tier_that_can_take_a_request() -> None:
    """What a budget downgrade picks: capability conditions only (size, tools, images, JSON
    where a rule says false); easiness conditions (tags, keywords) are not asked."""
    t = tiering(maxPromptTokens=40, hasImages=False, metadata={"tier": "nano"})
    assert choose_tier(t, extract_features(chat("easy one"), {})) == 1  # untagged
    assert cheapest_able(t, extract_features(chat("easy one"), {})) == 0
    image = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ]
    }
    assert cheapest_able(t, extract_features(image, {})) == 1  # mini's rule says nothing on it
    assert cheapest_able(t, extract_features(chat("word " * 4000), {})) == 2  # too long for both
    only_tools = tiering(hasTools=True)  # a tier for tool calls still takes a plain request
    assert cheapest_able(only_tools, extract_features(chat("hi"), {})) == 0
