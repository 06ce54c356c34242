"""Teacher mode for Banking77: answer an intent prompt with the dataset's label.

`thrifty simulator --oracle banking77` plays a frontier model on an intent-classification
route: when the system prompt offers the Banking77 intents and the user turn is a message
from `train.csv`, it answers that message's label; with probability `error_rate` (per
message, deterministic) it answers another label instead, like a real teacher's mistakes.

Data: `$THRIFTY_DATA_DIR/banking77/` (train.csv with text,category and categories.json),
else `../shared/data/banking77/` next to the repository. Error rate:
`$THRIFTY_ORACLE_ERROR_RATE` (default 0.03).
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

DEFAULT_ERROR_RATE = 0.03


def data_dir() -> Path:
    """`$THRIFTY_DATA_DIR`, else `<repo>/../shared/data`."""
    env = os.environ.get("THRIFTY_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def load_labels(directory: Path) -> dict[str, str]:
    """Message text -> category, from `train.csv`."""
    with (directory / "train.csv").open(encoding="utf-8", newline="") as fh:
        return {row["text"].strip(): row["category"] for row in csv.DictReader(fh)}


def _unit(text: str, salt: str) -> float:
    digest = hashlib.blake2b(f"{salt}\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


class Banking77Oracle:
    """The dataset label, wrong with probability `error_rate` (stable per message)."""

    def __init__(self, labels: dict[str, str], error_rate: float = DEFAULT_ERROR_RATE) -> None:
        if not 0 <= error_rate <= 1:
            raise ValueError("error_rate must be within [0, 1]")
        self._labels = labels
        self.error_rate = error_rate

    def label(self, text: str, labels: Sequence[str]) -> str | None:
        truth = self._labels.get(text.strip())
        if truth is None or truth not in labels:
            return None
        if self.error_rate and _unit(text, "err") < self.error_rate:
            others = [label for label in labels if label != truth]
            if others:
                return others[int(_unit(text, "pick") * len(others))]
        return truth


def create_oracle() -> Banking77Oracle:
    rate = float(os.environ.get("THRIFTY_ORACLE_ERROR_RATE", DEFAULT_ERROR_RATE))
    return Banking77Oracle(load_labels(data_dir() / "banking77"), rate)
