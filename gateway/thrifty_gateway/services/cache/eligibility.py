"""Which requests may be looked up / stored, and which answers may be stored, and client
directives (Cache-Control, x-thrifty-cache, x-thrifty-cache-threshold, x-thrifty-cache-tags).

All pure functions of the request body, headers and the policy's `Eligibility` rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from thrifty_core.api.cachepolicy import Eligibility
from thrifty_core.errors import InvalidRequestError

from ..pipeline import directive_tokens, header_value

_TAG = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
MAX_TAGS = 8


@dataclass(frozen=True, slots=True)
class Directives:
    """Client cache directives: skip lookup, skip write, maximum age, tighter threshold, tags."""

    no_cache: bool = False
    no_store: bool = False
    max_age: int | None = None
    threshold: float | None = None
    tags: tuple[str, ...] = ()


def parse_directives(headers: Mapping[str, str]) -> Directives:
    """`Cache-Control` (no-cache, no-store, max-age=N) and the x-thrifty-cache headers."""
    tokens = directive_tokens(headers)
    max_age: int | None = None
    for token in tokens:
        name, sep, value = token.partition("=")
        if name.strip() != "max-age" or not sep:
            continue
        # RFC 9111: delta-seconds, possibly quoted. A value that is not one cannot say how old
        # an answer may be: 0 (no lookup) rather than ignoring the client's limit. Repeated:
        # the strictest.
        delta = value.strip().strip('"')
        seconds = int(delta) if delta.isascii() and delta.isdigit() else 0
        max_age = seconds if max_age is None else min(max_age, seconds)
    threshold: float | None = None
    raw = header_value(headers, "x-thrifty-cache-threshold")  # two values: refused below
    if raw:
        try:
            threshold = float(raw)
        except ValueError:
            threshold = None
        if threshold is None or not 0.0 <= threshold <= 1.0:  # NaN fails too
            raise InvalidRequestError(
                "x-thrifty-cache-threshold must be a number from 0 to 1.",
                param="x-thrifty-cache-threshold",
                code="invalid_cache_header",
            )
    return Directives(
        no_cache="no-cache" in tokens or max_age == 0,
        no_store="no-store" in tokens,
        max_age=max_age,
        threshold=threshold,
        tags=parse_tags(header_value(headers, "x-thrifty-cache-tags") or ""),
    )


def parse_tags(raw: str) -> tuple[str, ...]:
    """The entry's purge tags. A tag that could not be stored is refused rather than dropped:
    a later purge by that tag would silently keep the entry."""
    tags = tuple(dict.fromkeys(t.strip() for t in raw.split(",") if t.strip()))
    bad = [t for t in tags if not _TAG.match(t)]
    if bad or len(tags) > MAX_TAGS:
        raise InvalidRequestError(
            f"x-thrifty-cache-tags takes at most {MAX_TAGS} comma-separated tags of 1 to 64 "
            "letters, digits and _ . : -"
            + (f"; {len(bad)} tag(s) do not match." if bad else f"; {len(tags)} were given."),
            param="x-thrifty-cache-tags",
            code="invalid_cache_header",
        )
    return tags


DEFAULT_TEMPERATURE = 1.0  # OpenAI's, for a request that sends none


def effective_threshold(policy: float, client: float | None) -> float:
    """Clients may tighten the policy's threshold, never loosen it."""
    if client is None or client != client:  # NaN
        return policy
    return min(1.0, max(policy, client))


def request_ineligible(body: Mapping[str, Any], rules: Eligibility) -> str | None:
    """Why a request must not use the cache at all (None when it may)."""
    temperature = body.get("temperature")
    if temperature is None:  # absent or null: the provider samples at its default
        temperature = DEFAULT_TEMPERATURE
    if isinstance(temperature, int | float) and temperature > rules.max_temperature:
        return "temperature"
    n = body.get("n")
    several = isinstance(n, int | float) and not isinstance(n, bool) and n > 1  # 2.0 too
    if several and not rules.cache_multiple_choices:
        return "n"
    if not rules.cache_tool_calls:
        if body.get("tools") or body.get("functions"):
            return "tools"
        for message in body.get("messages") or ():
            if isinstance(message, Mapping) and (
                message.get("role") in ("tool", "function") or message.get("tool_calls")
            ):
                return "tools"
    if body.get("stream") and not rules.cache_streaming:
        return "stream"
    return None


# The message fields a hit reproduces, streamed or not (`replay.replay_chunks`).
REPLAYED_FIELDS = frozenset({"role", "content", "tool_calls", "refusal"})


def replayable(message: Mapping[str, Any]) -> bool:
    """Text content (or none), and no other field with a value: a hit must answer what the
    provider did, and a streamed hit replays only content and tool calls (a list of content
    parts, reasoning text, annotations or audio would be lost or fail to replay)."""
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        return False
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list) or not all(_function_call(c) for c in calls):
        return False  # a custom tool's call (free-form input) replays as no function call
    return all(name in REPLAYED_FIELDS or _blank(value) for name, value in message.items())


def _function_call(call: Any) -> bool:
    return (
        isinstance(call, Mapping)
        and call.get("type", "function") == "function"
        and isinstance(call.get("function"), Mapping)
    )


def _blank(value: Any) -> bool:
    """Says nothing: null, empty, false, or a list or object of such (`prefix: false`, a
    proxy's `provider_specific_fields: {"refusal": null}`)."""
    if value is None or value is False or value == "":
        return True
    if isinstance(value, list):
        return all(_blank(v) for v in value)
    if isinstance(value, Mapping):
        return all(_blank(v) for v in value.values())
    return False


def answer_replayable(body: Mapping[str, Any]) -> bool:
    """Every choice's message is `replayable`."""
    choices = body.get("choices")
    if not isinstance(choices, list):
        return False
    messages = [c.get("message") if isinstance(c, Mapping) else None for c in choices]
    return all(isinstance(m, Mapping) and replayable(m) for m in messages)


def answer_ineligible(
    status: int, body: Mapping[str, Any] | None, rules: Eligibility
) -> str | None:
    """Why an answer must not be stored: errors, refusals, truncation, aborted streams,
    tool calls (unless allowed), empty answers."""
    if status != 200 or not isinstance(body, Mapping):
        return "error"
    if body.get("error") is not None:
        return "error"
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return "empty"
    for choice in choices:
        if not isinstance(choice, Mapping):
            return "empty"
        reason = choice.get("finish_reason")
        if reason not in ("stop", "tool_calls"):
            return "truncated" if reason == "length" else "unfinished"
        message = choice.get("message")
        if not isinstance(message, Mapping):
            return "empty"
        if message.get("refusal"):
            return "refusal"
        if not replayable(message):
            return "unreplayable"
        if message.get("tool_calls") or reason == "tool_calls":
            if not rules.cache_tool_calls:
                return "tools"
        elif not message.get("content"):
            return "empty"
    return None
