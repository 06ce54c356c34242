"""Export: captured records -> a deduplicated, labelled snapshot with a held-out split.

The split is by a hash of the input text, so one message never lands on both sides and a
later export keeps earlier held-out messages held out. Labels: declared ones are matched
after normalisation; otherwise they are discovered from the teacher's answers (normalised
answers seen at least `min_label_count` times). Answers naming no label are dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from thrifty_core.student.capture import (
    CaptureRecord,
    TokenLogprob,
    instructions_digest,
    label_index,
    match_label,
    normalise_label,
)
from thrifty_core.student.store import DatasetStore

log = logging.getLogger(__name__)

TRAIN = "train.jsonl"
HELD_OUT = "heldout.jsonl"
SNAPSHOT = "snapshot.json"


@dataclass(slots=True)
class Example:
    """One training/evaluation example."""

    text: str
    answer: str
    label: str = ""
    soft: dict[str, float] | None = None
    ts: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    messages: list[dict[str, str]] = field(default_factory=list)
    tenant: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Example:
        return cls(**data)


@dataclass(slots=True)
class Snapshot:
    """What an export wrote and the traffic it saw."""

    directory: Path
    labels: list[str]
    train: int
    held_out: int
    dropped: int
    first_ts: float
    last_ts: float
    requests: int
    teacher_cost_usd: float
    # the training examples' instructions (`instructions_digest`), most frequent first
    instructions: list[str] = field(default_factory=list)

    @property
    def requests_per_day(self) -> float:
        span = max(self.last_ts - self.first_ts, 3600.0)  # at least an hour of traffic
        return self.requests * 86400 / span

    @property
    def teacher_cost_per_request(self) -> float:
        return self.teacher_cost_usd / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["directory"] = str(self.directory)
        out["requests_per_day"] = self.requests_per_day
        out["teacher_cost_per_request"] = self.teacher_cost_per_request
        return out

    @classmethod
    def load(cls, directory: Path) -> Snapshot:
        data = json.loads((directory / SNAPSHOT).read_text("utf-8"))
        data.pop("requests_per_day", None)
        data.pop("teacher_cost_per_request", None)
        data["directory"] = directory
        return cls(**data)


def read_records(store: DatasetStore, route: str | None = None) -> Iterator[CaptureRecord]:
    """Every valid record in the store (optionally of one route); bad lines are skipped."""
    bad = 0
    for shard in store.shards():
        for line in store.read(shard):
            try:
                record = CaptureRecord.model_validate_json(line)
            except ValidationError:
                bad += 1
                continue
            if route is None or record.route == route:
                yield record
    if bad:
        log.warning("skipped %d unreadable capture lines", bad)


def discover_labels(
    answers: Iterable[str], min_count: int = 2, max_labels: int = 4096
) -> list[str]:
    """Labels from teacher answers: answers equal after normalisation form one label, named
    by their most frequent spelling; kept when seen `min_count` times (`max_labels` at most)."""
    forms: dict[str, Counter[str]] = {}
    for answer in answers:
        key = normalise_label(answer)
        if key:
            forms.setdefault(key, Counter())[answer.strip()] += 1
    ranked = sorted(forms.values(), key=lambda c: -sum(c.values()))
    found = [c.most_common(1)[0][0] for c in ranked[:max_labels] if sum(c.values()) >= min_count]
    return sorted(found)


def soft_label(
    logprobs: Sequence[TokenLogprob] | None, hard: str, index: dict[str, str]
) -> dict[str, float] | None:
    """Soft label from the teacher's first-token alternatives.

    Each alternative token's probability goes to the labels it starts (split evenly when
    several do); mass no alternative explains stays on the hard label.
    """
    if not logprobs or not logprobs[0].top:
        return None
    dist: dict[str, float] = {}
    for alt in logprobs[0].top:
        prefix = normalise_label(alt.token)
        if not prefix:
            continue
        matches = [label for norm, label in index.items() if norm.startswith(prefix)]
        if not matches:
            continue
        p = math.exp(alt.logprob)
        for label in matches:
            dist[label] = dist.get(label, 0.0) + p / len(matches)
    total = sum(dist.values())
    if total <= 0:
        return None
    if total > 1:
        dist = {k: v / total for k, v in dist.items()}
    else:
        dist[hard] = dist.get(hard, 0.0) + 1 - total
    return {k: round(v, 6) for k, v in dist.items() if v > 1e-4}


def held_out(text: str, fraction: float, seed: int = 0) -> bool:
    digest = hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def build_examples(
    records: Iterable[CaptureRecord], declared: Sequence[str] = (), min_label_count: int = 2
) -> tuple[list[Example], list[str], int]:
    """Examples (latest answer per tenant and input text), the label set, and how many were
    dropped. Each example keeps the tenant its record came from."""
    latest: dict[tuple[str, str], CaptureRecord] = {}
    for record in records:
        if not record.input.strip():
            continue
        key = (record.tenant, record.input)
        prev = latest.get(key)
        if prev is None or record.ts >= prev.ts:
            latest[key] = record
    labels = list(declared) or discover_labels((r.answer for r in latest.values()), min_label_count)
    index = label_index(labels)
    examples: list[Example] = []
    dropped = 0
    for record in latest.values():
        label = match_label(record.answer, index)
        if label is None:
            dropped += 1
            continue
        examples.append(
            Example(
                text=record.input,
                answer=record.answer,
                label=label,
                soft=soft_label(record.logprobs, label, index),
                ts=record.ts,
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                cost_usd=record.cost_usd,
                messages=record.messages,
                tenant=record.tenant,
            )
        )
    examples.sort(key=lambda e: e.ts)
    return examples, labels, dropped


MAX_INSTRUCTIONS = 64  # distinct instructions a student is trained under, at most


def common_instructions(examples: Iterable[Example], limit: int = MAX_INSTRUCTIONS) -> list[str]:
    """The digests of the examples' instructions, most frequent first (`limit` at most: a
    route whose system prompt changes with every request, say with the date in it, gets a
    student that serves under the most frequent ones only)."""
    counts = Counter(instructions_digest(e.messages) for e in examples)
    return [digest for digest, _ in counts.most_common(limit)]


def write_examples(path: Path, examples: Iterable[Example]) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(asdict(ex), ensure_ascii=False) + "\n")
            n += 1
    return n


def read_examples(path: Path) -> list[Example]:
    with path.open(encoding="utf-8") as fh:
        return [Example.from_json(json.loads(line)) for line in fh if line.strip()]


def export_snapshot(
    store: DatasetStore,
    out: Path,
    *,
    route: str | None = None,
    declared_labels: Sequence[str] = (),
    held_out_fraction: float = 0.2,
    seed: int = 0,
    min_label_count: int = 2,
) -> Snapshot:
    """Write `train.jsonl`, `heldout.jsonl` and `snapshot.json` under `out`."""
    records = list(read_records(store, route))
    examples, labels, dropped = build_examples(records, declared_labels, min_label_count)
    out.mkdir(parents=True, exist_ok=True)
    train = [e for e in examples if not held_out(e.text, held_out_fraction, seed)]
    test = [e for e in examples if held_out(e.text, held_out_fraction, seed)]
    write_examples(out / TRAIN, train)
    write_examples(out / HELD_OUT, test)
    teacher = [r for r in records if r.source == "teacher"]
    snapshot = Snapshot(
        directory=out,
        labels=labels,
        train=len(train),
        held_out=len(test),
        dropped=dropped,
        first_ts=min((r.ts for r in records), default=0.0),
        last_ts=max((r.ts for r in records), default=0.0),
        requests=len(teacher),
        teacher_cost_usd=sum(r.cost_usd for r in teacher),
        instructions=common_instructions(train),
    )
    (out / SNAPSHOT).write_text(json.dumps(snapshot.as_dict(), indent=2), "utf-8")
    log.info(
        "exported %d train / %d held-out examples, %d labels, %d dropped",
        len(train),
        len(test),
        len(labels),
        dropped,
    )
    return snapshot
