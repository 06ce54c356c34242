"""Batch input validation: every line checked up front, one report naming each bad line."""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from thrifty_core.api.batchqueue import BatchLimits
from thrifty_core.errors import InvalidRequestError

from ..proxy import check_chat_shape, unwritable
from .model import URLS

MAX_REPORTED = 20


@dataclass(frozen=True, slots=True)
class LineError:
    line: int  # 1-based; 0 for the whole file
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": None, "line": self.line}


@dataclass(frozen=True, slots=True)
class InputLine:
    custom_id: str
    url: str
    body: dict[str, Any]

    @property
    def endpoint(self) -> str:
        return URLS[self.url]


@dataclass
class Report:
    lines: list[InputLine] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def message(self) -> str:
        shown = "; ".join(
            (f"line {e.line}: {e.message}" if e.line else e.message)
            for e in self.errors[:MAX_REPORTED]
        )
        more = len(self.errors) - MAX_REPORTED
        return shown + (f"; and {more} more" if more > 0 else "")

    def as_errors(self) -> dict[str, Any]:
        """OpenAI's batch `errors` object."""
        return {"object": "list", "data": [e.as_dict() for e in self.errors[:MAX_REPORTED]]}


# OpenAI's limits on a batch's metadata: it is stored with the batch and returned by every get.
METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512


def check_metadata(metadata: Any) -> None:
    """A batch's `metadata`: at most 16 string pairs, keys up to 64 and values up to 512
    characters (as OpenAI's API takes them)."""
    if metadata is None:
        return
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidRequestError("metadata must map strings to strings.", param="metadata")
    if len(metadata) > METADATA_PAIRS:
        raise InvalidRequestError(
            f"metadata holds at most {METADATA_PAIRS} pairs.", param="metadata"
        )
    if any(len(k) > METADATA_KEY_CHARS for k in metadata):
        raise InvalidRequestError(
            f"metadata keys are at most {METADATA_KEY_CHARS} characters.", param="metadata"
        )
    if any(len(v) > METADATA_VALUE_CHARS for v in metadata.values()):
        raise InvalidRequestError(
            f"metadata values are at most {METADATA_VALUE_CHARS} characters.", param="metadata"
        )


def _check_line(
    number: int, raw: bytes, routes: Container[str] | None, seen: set[str]
) -> InputLine | LineError:
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return LineError(number, "invalid_json", "not valid JSON")
    if not isinstance(item, dict):
        return LineError(number, "invalid_request", "must be a JSON object")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return LineError(number, "missing_custom_id", "custom_id must be a non-empty string")
    if len(custom_id) > 512:
        return LineError(number, "invalid_custom_id", "custom_id is longer than 512 characters")
    if custom_id in seen:
        return LineError(number, "duplicate_custom_id", f"duplicate custom_id {custom_id!r}")
    seen.add(custom_id)
    if item.get("method", "POST") != "POST":
        return LineError(number, "invalid_method", "method must be POST")
    url = item.get("url")
    if url not in URLS:
        return LineError(
            number, "invalid_url", f"url must be one of {', '.join(URLS)} (got {url!r})"
        )
    body = item.get("body")
    if not isinstance(body, dict):
        return LineError(number, "invalid_body", "body must be a JSON object")
    if unwritable(body):
        return LineError(number, "invalid_body", "body nests arrays and objects too deeply")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return LineError(number, "missing_model", "body.model is required")
    if routes is not None and model not in routes:
        return LineError(number, "model_not_found", f"unknown model {model!r}")
    if body.get("stream"):
        return LineError(number, "invalid_body", "stream is not supported in batches")
    if URLS[url] == "chat":
        try:  # the checks a chat request sent directly gets
            check_chat_shape(body)
        except InvalidRequestError as exc:
            return LineError(number, "invalid_body", f"body: {exc.message}")
    if URLS[url] == "embeddings" and "input" not in body:
        return LineError(number, "invalid_body", "body.input is required")
    return InputLine(custom_id, url, body)


UTF8_BOM = b"\xef\xbb\xbf"


def validate_input(
    data: bytes,
    limits: BatchLimits,
    routes: Container[str] | None = None,
    max_line_bytes: int | None = None,
) -> Report:
    """Check a JSONL batch input file against the queue's limits; collect every bad line."""
    return validate_lines(
        data.splitlines(), len(data), limits, routes, max_line_bytes=max_line_bytes
    )


def bounded_lines(fh: BinaryIO, max_line_bytes: int) -> Iterator[bytes | None]:
    """The lines of a file, None for a line over `max_line_bytes` (its rest is skipped, never
    read into memory whole)."""
    while True:
        line = fh.readline(max_line_bytes + 2)  # the line, its newline, and one more byte
        if not line:
            return
        if len(line) <= max_line_bytes + 1 and (
            line.endswith(b"\n") or len(line) <= max_line_bytes
        ):
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = fh.readline(1 << 16)
        yield None


def validate_lines(
    raw_lines: Iterable[bytes | None],
    size: int,
    limits: BatchLimits,
    routes: Container[str] | None = None,
    *,
    keep_lines: bool = True,
    max_line_bytes: int | None = None,
) -> Report:
    """`validate_input` over the lines of a file as they are read (an upload on disk is not
    loaded whole); without `keep_lines` the parsed lines are checked, then dropped. A line
    over `max_line_bytes` (the gateway's `maxRequestBytes`: a line is one request) is an error
    and is never parsed: parsed JSON takes many times its size (nested empty arrays, 30x)."""
    report = Report()
    if size > limits.max_file_bytes:
        report.errors.append(
            LineError(0, "file_too_large", f"the file exceeds {limits.max_file_bytes} bytes")
        )
        return report
    seen: set[str] = set()
    urls: set[str] = set()
    blanks: list[int] = []  # blank lines so far; an error unless only blanks follow them
    last = 0  # number of the last non-blank line: the file's line count
    for number, raw in enumerate(raw_lines, start=1):
        if number == 1 and raw is not None and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM) :]  # as Windows editors save UTF-8
        too_large = raw is None or (
            max_line_bytes is not None and len(raw) - raw.endswith(b"\n") > max_line_bytes
        )
        if raw is not None and not too_large and not raw.strip():
            if last <= limits.max_lines_per_batch:
                blanks.append(number)
            continue
        last = number
        if number > limits.max_lines_per_batch:
            continue  # only counted from here on
        report.errors.extend(LineError(n, "empty_line", "empty line") for n in blanks)
        blanks.clear()
        checked: InputLine | LineError
        if raw is None or too_large:  # never parsed
            checked = LineError(
                number, "line_too_large", f"the line exceeds {max_line_bytes} bytes"
            )
        else:
            checked = _check_line(number, raw, routes, seen)
        if isinstance(checked, LineError):
            report.errors.append(checked)
        else:
            urls.add(checked.url)
            if keep_lines:
                report.lines.append(checked)
    if last == 0:
        return Report(errors=[LineError(0, "empty_file", "the file has no lines")])
    if last > limits.max_lines_per_batch:
        message = f"the file has {last} lines; the limit is {limits.max_lines_per_batch}"
        return Report(errors=[LineError(0, "too_many_lines", message)])
    if len(urls) > 1:
        report.errors.append(
            LineError(0, "mixed_urls", "all lines of a batch must use the same url")
        )
    return report
