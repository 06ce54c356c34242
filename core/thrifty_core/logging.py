"""Logging setup: JSON lines in cluster, plain text for people, with redaction.

The formatter writes the message, level, logger and only the `extra` fields on an allow-list
(ids, names, numbers), and masks anything that looks like an API key (`sk-...`, bearer tokens)
in the rendered message. Code must still never pass prompts or completions to a logger: the
allow-list keeps a careless `extra={"body": ...}` out of the output.
"""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from typing import Any

import orjson

ALLOWED_EXTRA: frozenset[str] = frozenset(
    {
        "tenant",
        "route",
        "model",
        "upstream",
        "provider",
        "status",
        "attempt",
        "duration_ms",
        "cost_usd",
        "request_id",
        "lever",
        "method",
        "path",
        "port",
        "batch_id",
        "job_id",
        "resource",
        "namespace",
        "stages",
        "reason",
        "error_type",
        "where",
    }
)
_KEY_PATTERN = re.compile(r"(sk-[A-Za-z0-9_\-]{4,}|(?i:bearer)\s+[A-Za-z0-9._\-]{8,}|[a-f0-9]{64})")


def redact(text: str) -> str:
    """Mask API keys, bearer tokens and SHA-256 key hashes in `text`."""
    return _KEY_PATTERN.sub("[redacted]", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line with allow-listed extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key in ALLOWED_EXTRA:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines, redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


# The id of the request the current task serves (set by the gateway's request-id middleware;
# tasks started while serving it inherit it): every log line written for a request carries it,
# a retry's or a breaker's included.
REQUEST_ID: ContextVar[str | None] = ContextVar("thrifty_request_id", default=None)


class RequestIdFilter(logging.Filter):
    """Sets `request_id` on records written while a request is served (unless the call named
    one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            request_id = REQUEST_ID.get()
            if request_id is not None:
                record.request_id = request_id
        return True


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Configure the root logger once for a process (call from entry points only)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
