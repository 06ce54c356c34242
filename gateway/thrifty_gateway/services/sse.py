"""Server-sent events: split upstream bytes into events, assemble a streamed completion,
and replay a completion as chunks (for stage answers to streaming requests)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from thrifty_core.prices import Usage

DONE = b"data: [DONE]\n\n"


def usage_of(data: dict[str, Any] | None) -> Usage | None:
    """Usage from an OpenAI `usage` object (None when absent)."""
    u = (data or {}).get("usage")
    if not isinstance(u, dict):
        return None
    details = u.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(u.get("prompt_tokens") or 0),
        completion_tokens=int(u.get("completion_tokens") or 0),
        cached_tokens=int((details.get("cached_tokens") if isinstance(details, dict) else 0) or 0),
    )


def error_event(message: str, code: str) -> bytes:
    """An OpenAI-shaped error as an SSE event: what a client's SDK raises on mid-stream."""
    err = {"message": message, "type": "server_error", "param": None, "code": code}
    return b"data: " + orjson.dumps({"error": err}) + b"\n\n"


def usage_object(usage: Usage) -> dict[str, Any]:
    """`usage` as an OpenAI `usage` object (what `usage_of` reads)."""
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    return out


class EventSplitter:
    """Feed raw bytes, get complete SSE events (each ending with a blank line)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        if b"\r\n" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        parts = buf.split(b"\n\n")
        self._buf = parts.pop()
        return [p + b"\n\n" for p in parts if p]

    def rest(self) -> bytes:
        out, self._buf = self._buf, b""
        return out


def event_data(event: bytes) -> bytes | None:
    """The `data:` payload of one event (None for comments and other fields)."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


BASE_FIELDS = ("id", "created", "model", "system_fingerprint", "service_tier")
ASSEMBLED = frozenset({"role", "content", "refusal", "tool_calls"})  # delta fields read below
TOOL_CALL_DELTA = frozenset({"index", "id", "type", "function"})  # a function call's fields


def _merged(have: Any, delta: Any) -> Any:
    """A streamed field's fragments put together: text concatenated, lists extended, objects
    merged field by field (`audio`'s transcript and data arrive in pieces); else the latest."""
    if isinstance(have, str) and isinstance(delta, str):
        return have + delta
    if isinstance(have, list) and isinstance(delta, list):
        return have + delta
    if isinstance(have, dict) and isinstance(delta, dict):
        out = dict(have)
        for key, value in delta.items():
            out[key] = _merged(out.get(key), value) if value is not None else out.get(key)
        return out
    return delta


class StreamAssembler:
    """Rebuild one `chat.completion` object from its chunks."""

    def __init__(self) -> None:
        self.base: dict[str, Any] = dict.fromkeys(BASE_FIELDS)
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.broken = False  # a delta it cannot assemble: no whole answer to give

    def add(self, chunk: dict[str, Any]) -> None:
        # Each from the first chunk that carries it: some providers (Azure) open the stream with
        # a chunk of empty id, model and created (content-filter results only).
        for name in BASE_FIELDS:
            if self.base.get(name) in (None, "", 0) and chunk.get(name) not in (None, ""):
                self.base[name] = chunk[name]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for c in chunk.get("choices") or ():
            idx = int(c.get("index", 0))
            choice = self.choices.setdefault(
                idx,
                {
                    "index": idx,
                    "message": {"role": "assistant", "content": None},
                    "logprobs": None,
                    "finish_reason": None,
                },
            )
            msg = choice["message"]
            delta = c.get("delta") or {}
            if delta.get("content") and not isinstance(delta["content"], str):
                self.broken = True  # content parts: relayed, but not assembled into an answer
                continue
            if delta.get("content"):
                msg["content"] = (msg["content"] or "") + delta["content"]
            if delta.get("refusal"):
                msg["refusal"] = (msg.get("refusal") or "") + delta["refusal"]
            for name, value in delta.items():
                # Anything else (reasoning text, annotations, audio) is kept as it came, so
                # that the answer is whole (and the cache sees it cannot replay it).
                if name in ASSEMBLED or value in (None, "", [], {}):
                    continue
                msg[name] = _merged(msg.get(name), value)
            for call in delta.get("tool_calls") or ():
                if call.get("type", "function") != "function" or set(call) - TOOL_CALL_DELTA:
                    # A custom tool's call (free-form `input`) or a kind this does not know:
                    # relayed as it came, never assembled as a function call with no name.
                    self.broken = True
                    continue
                calls = msg.setdefault("tool_calls", [])
                i = int(call.get("index", len(calls)))
                while len(calls) <= i:
                    calls.append(
                        {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                    )
                slot = calls[i]
                if call.get("id"):
                    slot["id"] = call["id"]
                fn = call.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            lp = c.get("logprobs")
            if lp and lp.get("content"):
                if choice["logprobs"] is None:
                    choice["logprobs"] = {"content": [], "refusal": None}
                choice["logprobs"]["content"].extend(lp["content"])
            if c.get("finish_reason"):
                choice["finish_reason"] = c["finish_reason"]

    def completion(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.base,
            "object": "chat.completion",
            "choices": [self.choices[i] for i in sorted(self.choices)],
        }
        if self.usage is not None:
            out["usage"] = self.usage
        return out


def completion_to_chunks(completion: dict[str, Any], include_usage: bool) -> Iterator[bytes]:
    """SSE events that stream `completion` (one content delta per choice), then [DONE]."""
    base = {
        "id": completion.get("id", "chatcmpl-thrifty"),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    for choice in completion.get("choices") or ():
        msg = choice.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant", "content": msg.get("content")}
        if msg.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(msg["tool_calls"])]
        yield _event(
            {
                **base,
                "choices": [
                    {
                        "index": choice.get("index", 0),
                        "delta": delta,
                        "logprobs": choice.get("logprobs"),
                        "finish_reason": None,
                    }
                ],
            }
        )
        yield _event(
            {
                **base,
                "choices": [
                    {
                        "index": choice.get("index", 0),
                        "delta": {},
                        "logprobs": None,
                        "finish_reason": choice.get("finish_reason"),
                    }
                ],
            }
        )
    if include_usage and completion.get("usage"):
        yield _event({**base, "choices": [], "usage": completion["usage"]})
    yield DONE


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def encode_chunks(chunks: list[dict[str, Any]]) -> Iterator[bytes]:
    for chunk in chunks:
        yield _event(chunk)
    yield DONE
