"""Cascade checks: does a cheap tier's answer look good enough to return?"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from thrifty_core.api.costcontrol import Cascade


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str = ""  # "logprob" | "json" | "refusal" | "truncated" | "empty"


PASS = Verdict(True)


def mean_logprob(choice: Mapping[str, Any]) -> float | None:
    """Mean token log-probability of a choice (None when the provider sent none)."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not content:
        return None
    values = [float(t["logprob"]) for t in content if isinstance(t, dict) and "logprob" in t]
    return sum(values) / len(values) if values else None


def wants_json(body: Mapping[str, Any]) -> bool:
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def json_ok(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def compile_patterns(patterns: Sequence[str]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p) for p in patterns)


def check_answer(
    cascade: Cascade,
    patterns: Sequence[re.Pattern[str]],
    request: Mapping[str, Any],
    answer: Mapping[str, Any] | None,
) -> Verdict:
    """The first failed check of the first choice, or PASS. Tool calls are not judged."""
    choices = (answer or {}).get("choices") or ()
    if not choices or not isinstance(choices[0], dict):
        return Verdict(False, "empty")
    choice = choices[0]
    message = choice.get("message") or {}
    if message.get("tool_calls"):
        return PASS
    if message.get("refusal"):
        return Verdict(False, "refusal")
    text = message.get("content")
    if not isinstance(text, str) or not text.strip():
        return Verdict(False, "empty")
    if cascade.escalate_on_truncation and choice.get("finish_reason") == "length":
        return Verdict(False, "truncated")
    if cascade.check_json and wants_json(request) and not json_ok(text):
        return Verdict(False, "json")
    if any(p.search(text) for p in patterns):
        return Verdict(False, "refusal")
    if cascade.min_mean_logprob is not None:
        mean = mean_logprob(choice)
        if mean is not None and mean < cascade.min_mean_logprob:
            return Verdict(False, "logprob")
    return PASS
