"""Request features the tier rules look at, read once from the parsed chat body."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..pipeline import header_value

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
TAGS_HEADER = "x-thrifty-tags"


@dataclass(frozen=True, slots=True)
class Features:
    """What the rule engine knows about a request (no raw text kept beyond `user_text`)."""

    prompt_tokens: int = 0
    has_tools: bool = False
    has_images: bool = False
    has_response_format: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    user_text: str = ""  # lower-cased user turns, for keyword rules and the classifier


def _parts(content: Any) -> tuple[str, bool]:
    """Text of a message content and whether it carries an image part."""
    if isinstance(content, str):
        return content, False
    if not isinstance(content, list):
        return "", False
    texts: list[str] = []
    image = False
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind in ("image_url", "input_image", "image"):
            image = True
    return " ".join(texts), image


def parse_tags(header: str | None) -> dict[str, str]:
    """`k=v,k2=v2` -> {k: v, k2: v2} (malformed pieces are ignored)."""
    tags: dict[str, str] = {}
    for piece in (header or "").split(","):
        key, sep, value = piece.partition("=")
        if sep and key.strip():
            tags[key.strip()] = value.strip()
    return tags


def extract_features(body: Mapping[str, Any], headers: Mapping[str, str]) -> Features:
    """Features of a chat request: prompt size (~4 characters a token), tools, images,
    JSON output, tags (body `metadata` then the `x-thrifty-tags` header) and user text."""
    chars = 0
    count = 0
    images = False
    user: list[str] = []
    for msg in body.get("messages") or ():
        if not isinstance(msg, dict):
            continue
        text, image = _parts(msg.get("content"))
        images = images or image
        chars += len(text)
        count += 1
        if msg.get("role") == "user":
            user.append(text)
    tools = body.get("tools") or body.get("functions")
    if isinstance(tools, list):
        chars += sum(len(str(t)) for t in tools)
    fmt = body.get("response_format")
    json_out = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
    tags: dict[str, str] = {}
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        tags.update({str(k): str(v) for k, v in metadata.items()})
    tags.update(parse_tags(header_value(headers, TAGS_HEADER)))
    return Features(
        prompt_tokens=chars // CHARS_PER_TOKEN + MESSAGE_OVERHEAD * count,
        has_tools=bool(tools),
        has_images=images,
        has_response_format=json_out,
        tags=tags,
        user_text="\n".join(user).lower(),
    )
