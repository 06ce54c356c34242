"""Replay a cached `chat.completion` as a valid SSE stream: a role chunk, the content in
small chunks, tool calls, the finish reason, usage (when asked) and `[DONE]` (added by the
gateway's encoder)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

CHUNK_CHARS = 24
# A word and its trailing whitespace, a word cut at CHUNK_CHARS (text without spaces: CJK,
# minified JSON, long URLs), or a run of whitespace.
_PIECE = re.compile(rf"\S{{1,{CHUNK_CHARS}}}\s*|\s+")


def split_content(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """Pieces of about `size` characters, cut after whitespace; joined they give `text`."""
    buf = ""
    for match in _PIECE.finditer(text):
        buf += match.group(0)
        if len(buf) >= size:
            yield buf
            buf = ""
    if buf:
        yield buf


def token_runs(
    tokens: list[dict[str, Any]], content: str
) -> list[tuple[str, list[dict[str, Any]]]] | None:
    """The answer's logprob tokens as (text, tokens) runs that spell `content`, or None when
    they do not. A token is usually whole text; a character split across tokens (an emoji, CJK)
    comes as tokens whose `token` is a byte escape and whose `bytes` are part of the character:
    those are joined into one run that carries all of them, as the provider streams them."""
    if "".join(str(t.get("token", "")) for t in tokens) == content:
        return [(str(t["token"]), [t]) for t in tokens]
    runs: list[tuple[str, list[dict[str, Any]]]] = []
    pending, run = b"", []
    for token in tokens:
        try:
            pending += bytes(token["bytes"])
        except (KeyError, TypeError, ValueError):  # no bytes, or not a list of 0..255
            return None
        run.append(token)
        try:
            text = pending.decode("utf-8")
        except UnicodeDecodeError:  # a character continues in the next token
            continue
        runs.append((text, run))
        pending, run = b"", []
    if run or "".join(text for text, _ in runs) != content:
        return None
    return runs


def replay_chunks(completion: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    base = {
        "id": completion.get("id", "chatcmpl-thrifty"),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    for name in ("system_fingerprint", "service_tier"):
        if completion.get(name):
            base[name] = completion[name]

    def chunk(
        index: int,
        delta: dict[str, Any],
        finish: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**base, "choices": [choice]}

    out: list[dict[str, Any]] = []
    for choice in completion.get("choices") or ():
        index = int(choice.get("index", 0))
        message = choice.get("message") or {}
        # As the provider streams it: "" before text, null when the answer is tool calls only.
        first = "" if message.get("content") is not None else None
        out.append(chunk(index, {"role": "assistant", "content": first}))
        content = message.get("content") or ""
        tokens = (choice.get("logprobs") or {}).get("content") or []
        runs = token_runs(tokens, content) if tokens else None
        if runs is not None:
            # Asked with logprobs: one chunk per token (per character split across tokens)
            # with its logprobs, as the provider streams them (the SDK joins them back).
            for text, run in runs:
                out.append(chunk(index, {"content": text}, logprobs={"content": run}))
        else:
            for piece in split_content(content):
                out.append(chunk(index, {"content": piece}))
        for i, call in enumerate(message.get("tool_calls") or ()):
            fn = call.get("function") or {}
            out.append(
                chunk(
                    index,
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": call.get("id"),
                                "type": call.get("type", "function"),
                                "function": {
                                    "name": fn.get("name", ""),
                                    "arguments": fn.get("arguments", ""),
                                },
                            }
                        ]
                    },
                )
            )
        out.append(chunk(index, {}, choice.get("finish_reason") or "stop"))
    if include_usage and completion.get("usage"):
        out.append({**base, "choices": [], "usage": completion["usage"]})
    return out
