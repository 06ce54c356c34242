"""The capture record: one (request, teacher answer, usage, logprobs) pair, as stored.

The gateway builds records with `build_record` (pure) and appends them, one JSON object per
line, to shards in the dataset store; `thrifty distill export` reads them back with
`CaptureRecord.model_validate`. Texts are redacted before a record is built. Only text
content is kept (images and tool calls are not captured).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .redact import Redactor, no_redaction, redact

SCHEMA_VERSION = 1
MAX_LOGPROB_TOKENS = 64
MAX_TOP_LOGPROBS = 8
NO_CAPTURE_HEADER = "x-thrifty-no-capture"


class TopLogprob(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    token: str
    logprob: float


class TokenLogprob(BaseModel):
    """One answer token with its log-probability and the teacher's top alternatives."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    token: str
    logprob: float
    top: list[TopLogprob] = Field(default_factory=list)


class CaptureRecord(BaseModel):
    """One captured teacher answer."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: int = SCHEMA_VERSION
    id: str
    ts: float
    route: str
    student: str
    tenant: str = Field(default="", description="The gateway tenant that asked.")
    model: str = Field(description="The teacher model that answered.")
    source: Literal["teacher", "evaluation"] = "teacher"
    messages: list[dict[str, str]] = Field(description="role/content pairs, redacted.")
    input: str = Field(description="The student's input text (last user turn), redacted.")
    answer: str = Field(description="The teacher's answer text, redacted.")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    logprobs: list[TokenLogprob] | None = None


def content_text(content: Any) -> str:
    """The text of a message content (a string or a list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def student_input(messages: Sequence[dict[str, Any]]) -> str:
    """What a student sees: the last user turn (the route's system prompt is fixed)."""
    for msg in reversed(messages):
        if msg.get("role") == "user":
            return content_text(msg.get("content"))
    return ""


INSTRUCTION_ROLES = frozenset({"system", "developer"})


def instructions_digest(
    messages: Sequence[dict[str, Any]], redactor: Redactor = no_redaction
) -> str:
    """A digest of a request's instructions (its system and developer messages, in order):
    a student answers only requests whose instructions it was trained under, since it reads
    the user turn alone. From a capture record's messages (redacted already) or a request's
    (with the redactor its captures were written with)."""
    parts = tuple(
        (str(m.get("role")), content_text(m.get("content")))
        for m in messages
        if m.get("role") in INSTRUCTION_ROLES
    )
    return _digest(parts, redactor)


@functools.lru_cache(maxsize=256)  # (a route's few system prompts, asked again and again)
def _digest(parts: tuple[tuple[str, str], ...], redactor: Redactor) -> str:
    kept = [(role, redactor(text).strip()) for role, text in parts]
    text = json.dumps(kept, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def answer_text(completion: dict[str, Any] | None) -> str | None:
    """The first choice's text, or None for tool calls, refusals and malformed answers."""
    if not completion:
        return None
    choices = completion.get("choices") or []
    if not choices:
        return None
    message = choices[0].get("message") or {}
    if message.get("tool_calls"):
        return None
    text = message.get("content")
    return text if isinstance(text, str) and text else None


def answer_logprobs(
    completion: dict[str, Any] | None, max_tokens: int = MAX_LOGPROB_TOKENS
) -> list[TokenLogprob] | None:
    """The first choice's token log-probabilities (bounded), or None when absent."""
    if not completion:
        return None
    choices = completion.get("choices") or []
    if not choices:
        return None
    lp = choices[0].get("logprobs") or {}
    content = lp.get("content") if isinstance(lp, dict) else None
    if not content:
        return None
    out: list[TokenLogprob] = []
    for entry in content[:max_tokens]:
        top = [
            TopLogprob(token=str(t.get("token", "")), logprob=float(t.get("logprob", 0.0)))
            for t in (entry.get("top_logprobs") or [])[:MAX_TOP_LOGPROBS]
        ]
        out.append(
            TokenLogprob(
                token=str(entry.get("token", "")),
                logprob=float(entry.get("logprob", 0.0)),
                top=top,
            )
        )
    return out


def build_record(
    *,
    request_id: str,
    ts: float,
    route: str,
    student: str,
    model: str,
    messages: Sequence[dict[str, Any]],
    completion: dict[str, Any] | None,
    prompt_tokens: int,
    completion_tokens: int,
    cost_usd: float,
    tenant: str = "",
    redactor: Redactor = redact,
    source: Literal["teacher", "evaluation"] = "teacher",
    keep_logprobs: bool = False,
) -> CaptureRecord | None:
    """A record for one teacher answer, or None when there is nothing to learn from."""
    answer = answer_text(completion)
    text = student_input(messages)
    if answer is None or not text.strip():  # no text a student could read
        return None
    redacted = redactor(answer)
    logprobs = answer_logprobs(completion) if keep_logprobs else None
    if logprobs is not None and redacted != answer:
        # Redaction masked part of the answer: its tokens (split anywhere, with the teacher's
        # alternatives) would spell out what was masked. Keep none of them.
        logprobs = None
    kept = [
        {"role": str(m.get("role", "")), "content": redactor(content_text(m.get("content")))}
        for m in messages
        if m.get("role") in ("system", "developer", "user", "assistant")
    ]
    return CaptureRecord(
        id=request_id,
        ts=ts,
        route=route,
        student=student,
        tenant=tenant,
        model=model,
        source=source,
        messages=kept,
        input=redactor(text),
        answer=redacted,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost_usd,
        logprobs=logprobs,
    )


_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalise_label(text: str) -> str:
    """Canonical form of a label answer: NFKC, lower case, runs of non-alphanumerics -> '_'.

    "Card arrival." / "card_arrival" / " CARD-ARRIVAL " all become "card_arrival".
    """
    folded = unicodedata.normalize("NFKC", text).strip().lower()
    return _NON_WORD.sub("_", folded).strip("_")


def label_index(labels: Iterable[str]) -> dict[str, str]:
    """Normalised form -> declared label, for `match_label`."""
    return {normalise_label(label): label for label in labels}


def match_label(answer: str, index: dict[str, str]) -> str | None:
    """The declared label an answer names (after normalisation), or None."""
    return index.get(normalise_label(answer))
