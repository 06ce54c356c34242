"""Detects prompts that resend a long identical prefix: candidates for provider prompt
caching (providers cache prefixes of about 1024 tokens and more)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

CHARS_PER_TOKEN = 4


def prompt_text(messages: Sequence[Any]) -> str:
    """Roles and contents of the messages in order (what a provider's prefix cache sees)."""
    parts: list[str] = []
    for msg in messages:
        if not isinstance(msg, Mapping):
            continue
        content = msg.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        parts.append(f"{msg.get('role', '')}\n{content or ''}\n")
    return "".join(parts)


def prefix_digest(messages: Sequence[Any], min_tokens: int) -> bytes | None:
    """Digest of the first `min_tokens` (~4 characters each) of the prompt; None when the
    prompt is shorter than that."""
    text = prompt_text(messages)
    size = min_tokens * CHARS_PER_TOKEN
    if len(text) < size:
        return None
    return hashlib.blake2b(text[:size].encode(), digest_size=16).digest()


class PrefixTracker:
    """Remembers the last `window` prefixes (LRU) and says whether one was seen before."""

    def __init__(self, window: int) -> None:
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self._window = window

    def seen(self, digest: bytes) -> bool:
        count = self._seen.get(digest)
        if count is not None:
            self._seen[digest] = count + 1
            self._seen.move_to_end(digest)
            return True
        self._seen[digest] = 1
        if len(self._seen) > self._window:
            self._seen.popitem(last=False)
        return False
