"""The simulator's engine: deterministic answers, usage, tools, teacher mode, embeddings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from thrifty_gateway.simulator import engine
from thrifty_gateway.simulator.settings import SimState, SimulatorSettings

MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "Where is my card delivery?"}]


def test_same_request_same_answer_and_stream_flag_ignored() -> None:
    a = engine.chat_completion({"model": "m", "messages": MESSAGES})
    b = engine.chat_completion({"model": "m", "messages": MESSAGES, "stream": True})
    c = engine.chat_completion({"model": "m", "messages": MESSAGES, "temperature": 0.5})
    assert a == b
    assert a["choices"][0]["message"]["content"] != c["choices"][0]["message"]["content"]
    usage = a["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] == engine.count_tokens(a["choices"][0]["message"]["content"])


def test_count_tokens_is_about_four_chars_per_token() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 20
    assert 0.7 < engine.count_tokens(text) / (len(text) / 4) < 1.5


def test_max_tokens_truncates_with_length() -> None:
    out = engine.chat_completion({"model": "m", "messages": MESSAGES, "max_tokens": 5})
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] <= 5


def test_tool_call_when_asked_and_text_after_tool_result() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "track_card",
                "parameters": {"type": "object", "properties": {"order": {"type": "integer"}}},
            },
        }
    ]
    msgs = [{"role": "user", "content": "Please track card delivery"}]
    out = engine.chat_completion({"model": "m", "messages": msgs, "tools": tools})
    call = out["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "track_card"
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    follow = [
        *msgs,
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "shipped"},
    ]
    after = engine.chat_completion({"model": "m", "messages": follow, "tools": tools})
    assert after["choices"][0]["message"]["content"]
    none = engine.chat_completion({"model": "m", "messages": MESSAGES, "tools": tools})
    assert none["choices"][0]["finish_reason"] == "stop"


class FixedOracle:
    def label(self, text: str, labels: Sequence[str]) -> str | None:
        return "card_arrival" if "card" in text and "card_arrival" in labels else None


def test_teacher_mode_answers_a_label_from_the_oracle() -> None:
    system = "Classify the customer's intent. Answer with one of: card_arrival, lost_card, refund"
    body = {"model": "m", "messages": [{"role": "system", "content": system}, *MESSAGES]}
    assert (
        engine.chat_completion(body, oracle=FixedOracle())["choices"][0]["message"]["content"]
        == "card_arrival"
    )
    fallback = engine.chat_completion(body)["choices"][0]["message"]["content"]
    assert fallback in {"card_arrival", "lost_card", "refund"}


def test_embeddings_are_unit_vectors_and_paraphrases_are_closer() -> None:
    def vec(text: str) -> list[float]:
        out = engine.embeddings({"model": "e", "input": text}, 256)
        emb: list[float] = out["data"][0]["embedding"]
        return emb

    a, b, c = vec("refund my card payment"), vec("please refund my card payment"), vec("hello")
    assert math.isclose(sum(x * x for x in a), 1.0, rel_tol=1e-9)

    def cos(x: list[float], y: list[float]) -> float:
        return sum(i * j for i, j in zip(x, y, strict=True))

    assert cos(a, b) > cos(a, c)


def test_fault_selection_order() -> None:
    settings = SimulatorSettings(model_faults={"storm": "429"}, rate_500=1.0)
    state = SimState(settings=settings)
    assert state.pick_fault("any", "timeout") == "timeout"
    assert state.pick_fault("storm", None) == "429"
    assert state.pick_fault("other", None) == "500"
    assert SimState(settings=SimulatorSettings()).pick_fault("other", None) is None


def test_embeddings_inputs_the_provider_refuses() -> None:
    from thrifty_gateway.simulator.engine import EMBEDDING_MAX_TOKENS, embeddings_input_error

    for ok in ("hi", ["a", "b"], [1, 2], [[1], [2, 3]]):
        assert embeddings_input_error(ok) is None
    for bad in ("", [], [""], ["a", [1]], [[1], []], None, 5):
        assert embeddings_input_error(bad) is not None
    too_long = embeddings_input_error(list(range(EMBEDDING_MAX_TOKENS + 1)))
    assert too_long is not None and "maximum context length" in too_long


def test_the_simulator_refuses_wrongly_typed_requests_as_openai_does() -> None:
    """A 400 naming the field, not a 500 (the gateway's breakers count those against the
    provider) nor a hang (`n` of 1e30)."""
    ok = {"model": "m", "messages": MESSAGES}
    assert engine.chat_request_error(ok) is None
    assert engine.chat_request_error(dict(ok, n=2, temperature=1.5, stop=["x"])) is None
    for field, value in (
        ("tools", "x"),
        ("n", 1e30),
        ("n", 0),
        ("max_tokens", "zz"),
        ("temperature", 5),
        ("top_logprobs", 50),
        ("stop", 5),
        ("response_format", "json"),
    ):
        refused = engine.chat_request_error(dict(ok, **{field: value}))
        assert refused is not None and refused[1] == field, (field, value)
    bad_role = engine.chat_request_error(dict(ok, messages=[{"role": "boss", "content": "x"}]))
    assert bad_role is not None and bad_role[1] == "messages[0].role"
    emb = {"model": "e", "input": "hi"}
    assert engine.embeddings_request_error(emb) is None
    for dims in ("x", -5, 0, 10**9):
        refused = engine.embeddings_request_error(dict(emb, dimensions=dims))
        assert refused is not None and refused[1] == "dimensions"
    assert engine.embeddings_request_error(dict(emb, input=""))[1] == "input"  # type: ignore[index]


def test_the_cli_help_names_every_fault_kind() -> None:
    from thrifty_cli.cmd.simulator import FAULTS
    from thrifty_gateway.simulator.settings import FAULT_KINDS

    assert FAULTS.split("|") == list(FAULT_KINDS)
