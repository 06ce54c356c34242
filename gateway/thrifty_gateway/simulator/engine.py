"""Deterministic OpenAI-shaped answers: the simulator's pure core.

The same request (model, messages, tools, sampling and output fields; not `stream`) always
gets the same answer, with realistic token usage from an approximate tokenizer (about four
characters per token). Also used by the simulated Batches API to answer batch lines.

Behaviours: tool calls when tools are offered and the last user turn names one (or
`tool_choice` forces one); JSON when `response_format` asks; `logprobs`; `n` choices;
truncation with finish_reason `length` when `max_tokens` cuts the answer; teacher mode (a
system prompt asking for one label from a list) answered by a pluggable `Oracle`.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import orjson

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_WORDS = (
    "the a to of and in is that for it on with as this be are you can will we your an by "
    "from at or have more not if all about which their when there one time new some use "
    "service account answer request model data cost cache batch team plan help result "
    "order payment card transfer balance support update review report value system "
    "process check number first next simple clear short quick good best right"
).split()
_LABELS = re.compile(
    r"(?:one of|labels?|categories|intents?)\s*(?:\([^)]*\))?\s*:\s*(?P<list>[^\n]+)",
    re.IGNORECASE,
)
_CREATED = 1_730_000_000


class Oracle(Protocol):
    """Answers teacher-mode requests: the right label for `text` among `labels`, or None."""

    def label(self, text: str, labels: Sequence[str]) -> str | None: ...


def count_tokens(text: str) -> int:
    """Approximate BPE token count: words split into ~4-character pieces, punctuation 1."""
    return sum(max(1, math.ceil(len(m) / 4)) for m in _TOKEN.findall(text))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def prompt_tokens(messages: Sequence[dict[str, Any]], tools: Sequence[Any] | None = None) -> int:
    """Tokens of a chat prompt, with OpenAI's per-message overhead."""
    total = 3
    for msg in messages:
        total += 4 + count_tokens(_content_text(msg.get("content")))
        for call in msg.get("tool_calls") or ():
            fn = call.get("function", {})
            total += count_tokens(str(fn.get("name", ""))) + count_tokens(
                str(fn.get("arguments", ""))
            )
    if tools:
        total += count_tokens(orjson.dumps(tools).decode())
    return total


def request_seed(body: dict[str, Any]) -> int:
    """A stable 64-bit seed from the answer-changing fields of a request."""
    keep = {k: v for k, v in body.items() if k not in ("stream", "stream_options", "user")}
    digest = hashlib.sha256(orjson.dumps(keep, option=orjson.OPT_SORT_KEYS)).digest()
    return int.from_bytes(digest[:8], "little")


def _rng(seed: int) -> Iterator[int]:
    """A tiny deterministic generator (splitmix64)."""
    state = seed
    while True:
        state = (state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        yield z ^ (z >> 31)


def _sentence_text(seed: int, words: int) -> str:
    rng = _rng(seed)
    out: list[str] = []
    for i in range(words):
        word = _WORDS[next(rng) % len(_WORDS)]
        if i == 0 or out[-1].endswith("."):
            word = word.capitalize()
        if i % 12 == 11 or i == words - 1:
            word += "."
        out.append(word)
    return " ".join(out)


def _last_user(messages: Sequence[dict[str, Any]]) -> str:
    for msg in reversed(messages):
        if msg.get("role") == "user":
            return _content_text(msg.get("content"))
    return ""


def _system(messages: Sequence[dict[str, Any]]) -> str:
    return " ".join(
        _content_text(m.get("content"))
        for m in messages
        if m.get("role") in ("system", "developer")
    )


def teacher_labels(system: str) -> list[str]:
    """The label list a teacher-mode system prompt offers ("... one of: a, b, c")."""
    match = _LABELS.search(system)
    if not match:
        return []
    raw = match.group("list")
    return [s.strip(" .`'\"") for s in re.split(r"[,|;]", raw) if s.strip(" .`'\"")]


def _schema_value(schema: dict[str, Any], seed: int, text: str) -> Any:
    kind = schema.get("type")
    if "enum" in schema and schema["enum"]:
        return schema["enum"][seed % len(schema["enum"])]
    if kind == "object":
        props = schema.get("properties") or {}
        return {
            name: _schema_value(sub, seed + i, text)
            for i, (name, sub) in enumerate(sorted(props.items()))
        }
    if kind == "array":
        return [_schema_value(schema.get("items") or {}, seed, text)]
    if kind == "integer":
        return seed % 100
    if kind == "number":
        return round((seed % 10000) / 100, 2)
    if kind == "boolean":
        return seed % 2 == 0
    words = _TOKEN.findall(text)
    return " ".join(words[-3:]) if words else _WORDS[seed % len(_WORDS)]


def _tool_call(
    body: dict[str, Any], messages: Sequence[dict[str, Any]], seed: int
) -> dict[str, Any] | None:
    tools = [t for t in body.get("tools") or () if t.get("type", "function") == "function"]
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    if messages and messages[-1].get("role") == "tool":
        return None
    chosen: dict[str, Any] | None = None
    if isinstance(choice, dict):
        name = choice.get("function", {}).get("name")
        chosen = next((t for t in tools if t["function"]["name"] == name), None)
    else:
        text = _last_user(messages).lower()
        for tool in tools:
            name = str(tool["function"]["name"])
            if name.lower() in text or name.replace("_", " ").lower() in text:
                chosen = tool
                break
        if chosen is None and choice == "required":
            chosen = tools[0]
    if chosen is None:
        return None
    fn = chosen["function"]
    args = _schema_value(fn.get("parameters") or {"type": "object"}, seed, _last_user(messages))
    return {
        "id": f"call_{seed % 10**12:012d}",
        "type": "function",
        "function": {"name": fn["name"], "arguments": orjson.dumps(args).decode()},
    }


def _answer_text(
    body: dict[str, Any], messages: Sequence[dict[str, Any]], seed: int, oracle: Oracle | None
) -> str:
    labels = teacher_labels(_system(messages))
    if labels:
        user = _last_user(messages)
        label = oracle.label(user, labels) if oracle is not None else None
        return label if label in labels else labels[seed % len(labels)]
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
        return orjson.dumps(_schema_value(schema, seed, _last_user(messages))).decode()
    if fmt.get("type") == "json_object":
        return orjson.dumps({"answer": _sentence_text(seed, 8)}).decode()
    user_tokens = count_tokens(_last_user(messages))
    words = 12 + (seed % 48) + min(user_tokens, 60) // 2
    return _sentence_text(seed, words)


def _truncate(text: str, max_tokens: int) -> tuple[str, bool]:
    pieces = re.findall(r"\S+\s*", text)
    out: list[str] = []
    used = 0
    for piece in pieces:
        cost = count_tokens(piece)
        if used + cost > max_tokens:
            return "".join(out).rstrip(), True
        out.append(piece)
        used += cost
    return text, False


def _logprobs(text: str, seed: int, top: int) -> dict[str, Any]:
    rng = _rng(seed ^ 0xA5A5)
    content = []
    for tok in re.findall(r"\S+\s*", text):
        lp = -(((next(rng) % 1000) / 1000.0) ** 2)
        entry: dict[str, Any] = {
            "token": tok,
            "logprob": round(lp, 6),
            "bytes": list(tok.encode()),
            "top_logprobs": [],
        }
        for k in range(top):
            alt = tok if k == 0 else _WORDS[next(rng) % len(_WORDS)] + " "
            entry["top_logprobs"].append(
                {"token": alt, "logprob": round(lp - k * 1.5, 6), "bytes": list(alt.encode())}
            )
        content.append(entry)
    return {"content": content, "refusal": None}


def chat_completion(
    body: dict[str, Any], *, oracle: Oracle | None = None, truncate: bool = False
) -> dict[str, Any]:
    """A `chat.completion` object for `body` (deterministic). `truncate` forces `length`."""
    messages: list[dict[str, Any]] = list(body.get("messages") or [])
    seed = request_seed(body)
    n = max(1, int(body.get("n") or 1))
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    choices = []
    completion = 0
    for index in range(n):
        cseed = seed + index * 7919
        call = _tool_call(body, messages, cseed)
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        finish = "stop"
        if call is not None:
            message["tool_calls"] = [call]
            finish = "tool_calls"
            completion += count_tokens(call["function"]["arguments"]) + 5
        else:
            text = _answer_text(body, messages, cseed, oracle)
            cut = False
            if truncate:
                limit_here = max(1, count_tokens(text) // 2)
                text, cut = _truncate(text, limit_here)
            elif limit:
                text, cut = _truncate(text, int(limit))
            if cut:
                finish = "length"
            message["content"] = text
            completion += count_tokens(text)
        choice: dict[str, Any] = {
            "index": index,
            "message": message,
            "logprobs": None,
            "finish_reason": finish,
        }
        if body.get("logprobs") and message["content"] is not None:
            choice["logprobs"] = _logprobs(
                message["content"], cseed, int(body.get("top_logprobs") or 0)
            )
        choices.append(choice)
    prompt = prompt_tokens(messages, body.get("tools"))
    return {
        "id": f"chatcmpl-sim{seed % 10**16:016d}",
        "object": "chat.completion",
        "created": _CREATED,
        "model": str(body.get("model", "")),
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "system_fingerprint": "fp_thrifty_sim",
        "service_tier": "default",
    }


SPLIT_EMOJI = "\U0001f69a"  # delivery truck: two UTF-16 code units


def split_emoji(chunk: dict[str, Any]) -> list[bytes]:
    """`chunk` as JSON; one whose content holds SPLIT_EMOJI becomes two chunks, the emoji's
    UTF-16 halves each escaped alone (valid JSON, lone surrogates to a strict parser)."""
    choices = chunk.get("choices") or []
    content = choices[0].get("delta", {}).get("content") if choices else None
    if not content or SPLIT_EMOJI not in content:
        return [orjson.dumps(chunk)]
    before, after = content.split(SPLIT_EMOJI, 1)
    out = []
    for text, half in ((before + "@@half@@", b"\\ud83d"), ("@@half@@" + after, b"\\ude9a")):
        delta = {**choices[0]["delta"], "content": text}
        data = orjson.dumps({**chunk, "choices": [{**choices[0], "delta": delta}]})
        out.append(data.replace(b"@@half@@", half))
    return out


def stream_chunks(completion: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    """The `chat.completion.chunk` objects that stream `completion` (a few words each)."""
    base = {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
        "system_fingerprint": completion["system_fingerprint"],
    }
    for choice in completion["choices"]:
        idx = choice["index"]
        msg = choice["message"]
        yield {
            **base,
            "choices": [
                {
                    "index": idx,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
        if msg.get("tool_calls"):
            for i, call in enumerate(msg["tool_calls"]):
                delta = {"tool_calls": [{"index": i, **call}]}
                yield {
                    **base,
                    "choices": [
                        {"index": idx, "delta": delta, "logprobs": None, "finish_reason": None}
                    ],
                }
        else:
            pieces = re.findall(r"\S+\s*", msg["content"] or "")
            for start in range(0, len(pieces), 3):
                yield {
                    **base,
                    "choices": [
                        {
                            "index": idx,
                            "delta": {"content": "".join(pieces[start : start + 3])},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
        yield {
            **base,
            "choices": [
                {
                    "index": idx,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": choice["finish_reason"],
                }
            ],
        }
    if include_usage:
        yield {**base, "choices": [], "usage": completion["usage"]}


def embed_text(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector; texts sharing words get similar vectors (feature hashing)."""
    vec = [0.0] * dimensions
    words = [w.lower() for w in _TOKEN.findall(text)] or [""]
    for word in words:
        h = hashlib.blake2b(word.encode(), digest_size=8).digest()
        idx = int.from_bytes(h[:4], "little") % dimensions
        vec[idx] += 1.0 if h[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


EMBEDDING_MAX_TOKENS = 8192  # per input, as OpenAI's embedding models


ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_N = 128  # choices per request, as OpenAI's API
MAX_DIMENSIONS = 3072


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _typed(param: str, expected: str) -> tuple[str, str]:
    return f"Invalid type for '{param}': expected {expected}.", param


def chat_request_error(body: dict[str, Any]) -> tuple[str, str] | None:
    """(message, param) of the 400 OpenAI answers a wrongly typed chat request with; None when
    it takes it. Without it the simulator failed with a 500 (a flaky provider to the gateway's
    circuit breakers) or, for a huge `n`, hung."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _typed("messages", "a non-empty array of messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            return f"Invalid value for 'messages[{i}].role'.", f"messages[{i}].role"
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            return _typed(f"messages[{i}].content", "a string or an array of content parts")
    for name in ("tools", "functions"):
        value = body.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(t, dict) for t in value)
        ):
            return _typed(name, "an array of objects")
    n = body.get("n")
    if n is not None and not (_is_int(n) and 1 <= n <= MAX_N):
        return f"Invalid 'n': expected an integer from 1 to {MAX_N}.", "n"
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and not (_is_int(value) and value >= 1):
            return f"Invalid '{name}': expected a positive integer.", name
    top = body.get("top_logprobs")
    if top is not None and not (_is_int(top) and 0 <= top <= 20):
        return "Invalid 'top_logprobs': expected an integer from 0 to 20.", "top_logprobs"
    for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1)):
        value = body.get(name)
        if value is not None and not (_is_number(value) and low <= value <= high):
            return f"Invalid '{name}': expected a number from {low} to {high}.", name
    for name in ("response_format", "stream_options"):
        value = body.get(name)
        if value is not None and not isinstance(value, dict):
            return _typed(name, "an object")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        return _typed("stop", "a string or an array of strings")
    return None


def embeddings_request_error(body: dict[str, Any]) -> tuple[str, str] | None:
    """(message, param) of the 400 OpenAI answers a bad embeddings request with, or None."""
    refused = embeddings_input_error(body.get("input"))
    if refused is not None:
        return refused, "input"
    dims = body.get("dimensions")
    if dims is not None and not (_is_int(dims) and 1 <= dims <= MAX_DIMENSIONS):
        return f"Invalid 'dimensions': expected an integer from 1 to {MAX_DIMENSIONS}.", (
            "dimensions"
        )
    return None


def embeddings_input_error(raw: Any) -> str | None:
    """Why OpenAI would refuse this `input` with a 400 (None when it takes it): an empty
    string or array, strings mixed with token arrays, an input over the context length."""
    invalid = "'$.input' is invalid. Please check the API reference."
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw):
        items = [raw]
    elif isinstance(raw, list) and raw:
        items = raw
        if not (all(isinstance(i, str) for i in raw) or all(isinstance(i, list) for i in raw)):
            return invalid
    else:
        return invalid
    for item in items:
        if not item:
            return invalid
        tokens = count_tokens(item) if isinstance(item, str) else len(item)
        if tokens > EMBEDDING_MAX_TOKENS:
            return (
                f"This model's maximum context length is {EMBEDDING_MAX_TOKENS} tokens, however "
                f"you requested {tokens} tokens in the input. Please reduce your input."
            )
    return None


def embeddings(body: dict[str, Any], default_dimensions: int = 1536) -> dict[str, Any]:
    """An embeddings `list` for `body` (input: string, list of strings or token arrays)."""
    raw = body.get("input", "")
    items: list[Any] = (
        raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    )
    dims = int(body.get("dimensions") or default_dimensions)
    as_b64 = body.get("encoding_format") == "base64"
    data = []
    tokens = 0
    for i, item in enumerate(items):
        text = item if isinstance(item, str) else " ".join(str(t) for t in item)
        tokens += count_tokens(text) if isinstance(item, str) else len(item)
        vec = embed_text(text, dims)
        emb: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if as_b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {
        "object": "list",
        "data": data,
        "model": str(body.get("model", "")),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
