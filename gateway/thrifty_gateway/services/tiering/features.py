"""Request features the tier rules look at, read once from the parsed chat body."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..pipeline import header_value

CHARS_PER_TOKEN = 4  # ASCII text
NON_ASCII_BYTES_PER_TOKEN = 3  # UTF-8 bytes of other text: a CJK character is about a token
HEAVY_PART_TOKENS = 1000  # a file or audio part at least, plus its data's size
HEAVY_CHARS_PER_TOKEN = 64  # base64 characters of a file or audio part per token (a rough,
# high estimate: a PDF page of ~50-100 KB is 1-2k tokens)
MESSAGE_OVERHEAD = 4
TAGS_HEADER = "x-thrifty-tags"
IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
HEAVY_PARTS = frozenset({"file", "input_file", "input_audio", "audio"})


@dataclass(frozen=True, slots=True)
class Features:
    """What the rule engine knows about a request (no raw text kept beyond `user_text`)."""

    prompt_tokens: int = 0
    has_tools: bool = False
    has_images: bool = False
    has_response_format: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    user_text: str = ""  # lower-cased user turns, for keyword rules and the classifier


def text_tokens(text: str) -> float:
    """Tokens of `text`, estimated: ~4 ASCII characters a token, ~3 UTF-8 bytes a token for
    the rest (CJK text is about a token a character; 4 characters a token would count it a
    quarter of its size)."""
    if text.isascii():
        return len(text) / CHARS_PER_TOKEN
    ascii_chars = len(text.encode("ascii", "ignore"))
    other = len(text.encode("utf-8", "surrogatepass")) - ascii_chars
    return ascii_chars / CHARS_PER_TOKEN + other / NON_ASCII_BYTES_PER_TOKEN


def _data_size(part: dict[str, Any]) -> int:
    """Characters of the inline data of a file or audio part (0 for a file id or a URL)."""
    inner = part.get(part.get("type") or "")
    found = inner if isinstance(inner, dict) else part
    data = found.get("file_data") or found.get("data")
    return len(data) if isinstance(data, str) else 0


def _parts(content: Any) -> tuple[str, bool, float]:
    """Text of a message content, whether it carries a non-text part (image, file, audio), and
    the tokens its file and audio parts add."""
    if isinstance(content, str):
        return content, False, 0.0
    if not isinstance(content, list):
        return "", False, 0.0
    texts: list[str] = []
    image = False
    heavy = 0.0
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind in IMAGE_PARTS:
            image = True
        elif kind in HEAVY_PARTS:
            # A model without image input takes no files or audio either: `hasImages` rules
            # keep them from text-only tiers, and their size from small-context ones.
            image = True
            heavy += HEAVY_PART_TOKENS + _data_size(part) / HEAVY_CHARS_PER_TOKEN
    return " ".join(texts), image, heavy


def parse_tags(header: str | None) -> dict[str, str]:
    """`k=v,k2=v2` -> {k: v, k2: v2} (malformed pieces are ignored)."""
    tags: dict[str, str] = {}
    for piece in (header or "").split(","):
        key, sep, value = piece.partition("=")
        if sep and key.strip():
            tags[key.strip()] = value.strip()
    return tags


def extract_features(body: Mapping[str, Any], headers: Mapping[str, str]) -> Features:
    """Features of a chat request: prompt size (see `text_tokens`; file and audio parts by
    their size), tools, images (file and audio parts count as such), JSON output, tags (body
    `metadata` then the `x-thrifty-tags` header) and user text."""
    tokens = 0.0
    count = 0
    images = False
    user: list[str] = []
    for msg in body.get("messages") or ():
        if not isinstance(msg, dict):
            continue
        text, image, heavy = _parts(msg.get("content"))
        images = images or image
        tokens += text_tokens(text) + heavy
        count += 1
        if msg.get("role") == "user":
            user.append(text)
    tools = body.get("tools") or body.get("functions")
    if isinstance(tools, list):
        tokens += sum(text_tokens(str(t)) for t in tools)
    fmt = body.get("response_format")
    json_out = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
    tags: dict[str, str] = {}
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        tags.update({str(k): str(v) for k, v in metadata.items()})
    tags.update(parse_tags(header_value(headers, TAGS_HEADER)))
    return Features(
        prompt_tokens=int(tokens) + MESSAGE_OVERHEAD * count,
        has_tools=bool(tools),
        has_images=images,
        has_response_format=json_out,
        tags=tags,
        user_text="\n".join(user).lower(),
    )
