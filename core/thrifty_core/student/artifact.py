"""Versioned student artifacts: one directory per version with a `manifest.json`.

    <root>/v0001/manifest.json   kind, labels, calibration, gate, evaluation, promoted
    <root>/v0001/head.npz        classifier head (W, b) for `classifier` students
    <root>/v0001/adapter/        LoRA adapter for `causal-lm` students
    <root>/v0001/report.json|png evaluation report

A version is numbered (`v0001`, the next free number: `thrifty distill train` run by hand) or
named after the operator's run that trained it (`v` and 8 hex digits, a digest of the spec:
each run trains and evaluates its own version, whatever other runs do meanwhile).

A version is *promoted* only when its evaluation passed the gate; the serving version is the
pinned one (`spec.serving.version`, the rollback switch) or else the newest promoted one.
A pinned version that never passed the gate is refused.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST = "manifest.json"
HEAD = "head.npz"
ADAPTER = "adapter"
VERSION_RE = re.compile(r"^v(\d{4,})$")
RUN_VERSION_RE = re.compile(r"^v[0-9a-f]{8}$")


class Gate(BaseModel):
    """The thresholds a version was evaluated against."""

    model_config = ConfigDict(frozen=True)

    min_agreement: float = 0.9
    min_coverage: float = 0.5
    confidence_threshold: float = 0.7


class ArtifactManifest(BaseModel):
    """What a version directory holds and how it fared."""

    model_config = ConfigDict(extra="allow")

    version: str
    kind: Literal["classifier", "causal-lm"]
    student: str = ""
    route: str = ""
    created: str = Field(default_factory=lambda: now_iso())
    base_model: str = ""
    labels: list[str] = Field(default_factory=list)
    # digests of the instructions (system and developer messages) of the training examples
    # (`instructions_digest`); empty for versions trained before 2026-12-08
    instructions: list[str] = Field(default_factory=list)
    dim: int = 0
    temperature: float = 1.0
    gate: Gate = Field(default_factory=Gate)
    evaluated: bool = False
    gate_passed: bool = False
    promoted: bool = False
    promoted_at: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def version_number(version: str) -> int:
    match = VERSION_RE.match(version)
    return int(match.group(1)) if match else -1


def is_version(name: str) -> bool:
    """A version directory's name: numbered or named after a run."""
    return version_number(name) >= 0 or RUN_VERSION_RE.match(name) is not None


def list_versions(root: Path) -> list[ArtifactManifest]:
    """Every readable version under `root`, oldest first (by creation; numbered versions
    created in the same second by number)."""
    if not root.is_dir():
        return []
    found: list[ArtifactManifest] = []
    for child in root.iterdir():
        path = child / MANIFEST
        if not is_version(child.name) or not path.is_file():
            continue
        found.append(read_manifest(child))
    return sorted(found, key=lambda m: (m.created, version_number(m.version), m.version))


def next_version(root: Path) -> str:
    numbers = [version_number(p.name) for p in root.iterdir()] if root.is_dir() else []
    return f"v{max([0, *numbers]) + 1:04d}"


def read_manifest(directory: Path) -> ArtifactManifest:
    return ArtifactManifest.model_validate_json((directory / MANIFEST).read_text("utf-8"))


def write_manifest(directory: Path, manifest: ArtifactManifest) -> None:
    """Write atomically (readers never see half a manifest)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{MANIFEST}.{os.getpid()}"
    tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2), "utf-8")
    tmp.replace(directory / MANIFEST)


def version_to_load(root: Path, pinned: str | None, current: str | None) -> ArtifactManifest | None:
    """The version that should serve (see `resolve_version`) when it is not `current`; None
    when it is, when none has passed yet, or when the versions cannot be read (a reload keeps
    what it serves)."""
    try:
        manifest = resolve_version(root, pinned)
    except (LookupError, OSError, ValueError):
        return None
    return None if manifest is None or manifest.version == current else manifest


def resolve_version(root: Path, pinned: str | None = None) -> ArtifactManifest | None:
    """The version that should serve: the pinned one, else the newest promoted one."""
    if pinned:
        directory = root / pinned
        if not (directory / MANIFEST).is_file():
            raise LookupError(f"student version {pinned} does not exist under {root}")
        manifest = read_manifest(directory)
        if not manifest.gate_passed:
            raise LookupError(f"student version {pinned} never passed its evaluation gate")
        return manifest
    promoted = [m for m in list_versions(root) if m.promoted and m.gate_passed]
    return promoted[-1] if promoted else None
