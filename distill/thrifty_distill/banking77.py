"""The Banking77 intent data set as a distillation workload (demo, tests, benchmark).

Data: `$THRIFTY_DATA_DIR/banking77/` (train.csv: text,category; categories.json), else
`../shared/data/banking77/` next to the repository. The route's prompt is a fixed system
message offering the intents and the customer's message as the user turn; the provider
simulator's `banking77` oracle plays the teacher for it.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def data_dir() -> Path:
    env = os.environ.get("THRIFTY_DATA_DIR")
    if env:
        return Path(env) / "banking77"
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "banking77"


def load_rows(directory: Path | None = None) -> list[tuple[str, str]]:
    """(text, category) rows of train.csv, in file order."""
    path = (directory or data_dir()) / "train.csv"
    with path.open(encoding="utf-8", newline="") as fh:
        return [(r["text"].strip(), r["category"]) for r in csv.DictReader(fh)]


def load_labels(directory: Path | None = None) -> list[str]:
    data: list[str] = json.loads(((directory or data_dir()) / "categories.json").read_text())
    return data


def system_prompt(labels: Sequence[str]) -> str:
    return (
        "You classify a bank customer's message by intent. Reply with the intent name only, "
        "one of: " + ", ".join(labels)
    )


def messages(text: str, labels: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": system_prompt(labels)},
        {"role": "user", "content": text},
    ]


def subset(
    rows: Sequence[tuple[str, str]], labels: Sequence[str], per_label: int, seed: int = 0
) -> list[tuple[str, str]]:
    """Up to `per_label` rows of each of `labels`, shuffled (unique texts)."""
    seen: set[str] = set()
    picked: dict[str, list[tuple[str, str]]] = {label: [] for label in labels}
    for text, label in rows:
        if label in picked and text not in seen and len(picked[label]) < per_label:
            picked[label].append((text, label))
            seen.add(text)
    out = [row for group in picked.values() for row in group]
    random.Random(seed).shuffle(out)
    return out
