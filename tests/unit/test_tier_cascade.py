"""Cascade checks: low mean log-probability, invalid JSON, refusals, truncation."""

from __future__ import annotations

from typing import Any

from thrifty_core.api.costcontrol import Cascade
from thrifty_gateway.services.tiering.checks import (
    check_answer,
    compile_patterns,
    mean_logprob,
)


def answer(
    text: str | None,
    *,
    logprobs: list[float] | None = None,
    finish: str = "stop",
    **message: Any,
) -> dict[str, Any]:
    lp = {"content": [{"token": "t", "logprob": v} for v in logprobs]} if logprobs else None
    return {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, **message},
                "logprobs": lp,
                "finish_reason": finish,
            }
        ]
    }


REQUEST: dict[str, Any] = {"messages": [{"role": "user", "content": "q"}]}
JSON_REQUEST: dict[str, Any] = {**REQUEST, "response_format": {"type": "json_object"}}


def verdict(cascade: Cascade, request: dict[str, Any], body: dict[str, Any] | None) -> str:
    v = check_answer(cascade, compile_patterns(cascade.refusal_patterns), request, body)
    return "ok" if v.ok else v.reason


def test_mean_logprob() -> None:
    assert mean_logprob(answer("x", logprobs=[-0.1, -0.3])["choices"][0]) == -0.2
    assert mean_logprob(answer("x")["choices"][0]) is None


def test_low_mean_logprob_escalates() -> None:
    cascade = Cascade(enabled=True, min_mean_logprob=-0.5)
    assert verdict(cascade, REQUEST, answer("fine", logprobs=[-0.1, -0.2])) == "ok"
    assert verdict(cascade, REQUEST, answer("unsure", logprobs=[-1.5, -0.9])) == "logprob"
    # a provider that sends no logprobs cannot fail this check
    assert verdict(cascade, REQUEST, answer("fine")) == "ok"


def test_invalid_json_escalates_only_when_json_was_asked() -> None:
    cascade = Cascade(enabled=True)
    assert verdict(cascade, JSON_REQUEST, answer('{"a": 1}')) == "ok"
    assert verdict(cascade, JSON_REQUEST, answer('{"a": 1')) == "json"
    assert verdict(cascade, REQUEST, answer('{"a": 1')) == "ok"
    assert verdict(cascade.model_copy(update={"check_json": False}), JSON_REQUEST, answer("{")) == (
        "ok"
    )


def test_refusals_escalate() -> None:
    cascade = Cascade(enabled=True)
    assert verdict(cascade, REQUEST, answer("I'm sorry, but I can't help with that.")) == (
        "refusal"
    )
    assert verdict(cascade, REQUEST, answer("As an AI language model, I ...")) == "refusal"
    assert verdict(cascade, REQUEST, answer(None, refusal="no")) == "refusal"
    assert verdict(cascade, REQUEST, answer("Sorry for the delay, here it is.")) == "ok"
    custom = Cascade(enabled=True, refusal_patterns=[r"(?i)not sure"])
    assert verdict(custom, REQUEST, answer("I am NOT SURE about it")) == "refusal"


def test_empty_truncated_and_tool_calls() -> None:
    cascade = Cascade(enabled=True, escalate_on_truncation=True)
    assert verdict(cascade, REQUEST, {"choices": []}) == "empty"
    assert verdict(cascade, REQUEST, None) == "empty"
    assert verdict(cascade, REQUEST, answer("  ")) == "empty"
    assert verdict(cascade, REQUEST, answer("cut", finish="length")) == "truncated"
    assert verdict(Cascade(), REQUEST, answer("cut", finish="length")) == "ok"
    call = answer(None, tool_calls=[{"id": "c", "type": "function"}])
    assert verdict(cascade, REQUEST, call) == "ok"
