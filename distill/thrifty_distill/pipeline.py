"""The distillation pipeline: export -> train -> evaluate (gate, promote).

Each step is one function and one `thrifty distill` command (the entrypoint of the
operator's Job). Steps communicate through files only: the snapshot directory written by
`export` and the versioned artifact root (`thrifty_core.student.artifact`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thrifty_core.api.cachepolicy import EmbeddingModel
from thrifty_core.api.distilledmodel import DistilledModel, DistilledModelSpec
from thrifty_core.embedding import Embedder, create_embedder
from thrifty_core.student.artifact import (
    MANIFEST,
    ArtifactManifest,
    Gate,
    is_version,
    list_versions,
    next_version,
    now_iso,
    read_manifest,
    write_manifest,
)
from thrifty_core.student.classifier import load_head, save_head
from thrifty_core.student.store import FileDatasetStore

from .costs import cost_structure
from .dataset import HELD_OUT, TRAIN, Snapshot, export_snapshot, read_examples
from .evaluate import evaluate_predictions
from .report import write_report

log = logging.getLogger(__name__)

DEFAULT_EMBEDDING = "all-MiniLM-L6-v2"


@dataclass(frozen=True, slots=True)
class Job:
    """One DistilledModel's pipeline inputs."""

    name: str
    spec: DistilledModelSpec
    capture_dir: Path
    snapshot_dir: Path
    artifacts_dir: Path

    @classmethod
    def from_resource(
        cls, resource: DistilledModel, capture_dir: Path, snapshot_dir: Path, artifacts_dir: Path
    ) -> Job:
        return cls(resource.metadata.name, resource.spec, capture_dir, snapshot_dir, artifacts_dir)

    @property
    def gate(self) -> Gate:
        return Gate(
            min_agreement=self.spec.evaluation.min_agreement,
            min_coverage=self.spec.evaluation.min_coverage,
            confidence_threshold=self.spec.routing.confidence_threshold,
        )


def default_embedder(spec: DistilledModelSpec, threads: int | None = None) -> Embedder:
    """The same local embedding model the semantic cache uses, in float32: the gateway serves
    classifier students on the float graph (`services.embedders`), so they are trained and
    gated on the vectors they will see."""
    model = spec.student.base_model or DEFAULT_EMBEDDING
    return create_embedder(
        EmbeddingModel(model=model, precision="float32"), threads=threads or (os.cpu_count() or 1)
    )


SNAPSHOTS_KEPT = 1  # snapshots of earlier runs kept whole beside the current run's


def prune_snapshots(current: Path, keep: int = SNAPSHOTS_KEPT) -> list[str]:
    """Drop the training examples of earlier runs' snapshots (each a full export of the
    capture), but the `keep` newest: a retrain a day (`thrifty.dev/retrain`) would fill the
    volume. What evaluation reads (the held-out examples and the snapshot's figures) stays:
    the operator may evaluate an earlier run's version again (a spec reverted to it). Only in
    the operator's layout (`<snapshots>/<run>`, runs named as versions)."""
    if not is_version(current.name) or not current.parent.is_dir():
        return []
    others = [
        p for p in current.parent.iterdir() if p.is_dir() and p != current and is_version(p.name)
    ]
    others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    dropped = []
    for old in others[keep:]:
        train = old / TRAIN
        if train.exists():
            train.unlink(missing_ok=True)
            dropped.append(old.name)
    if dropped:
        log.info("dropped the training examples of earlier runs: %s", ", ".join(dropped))
    return dropped


def export(job: Job) -> Snapshot:
    prune_snapshots(job.snapshot_dir)
    store = FileDatasetStore(job.capture_dir, writer="export")
    return export_snapshot(
        store,
        job.snapshot_dir,
        route=job.spec.teacher.route,
        declared_labels=job.spec.student.labels,
        held_out_fraction=job.spec.evaluation.held_out_fraction,
    )


class NotEnoughExamplesError(RuntimeError):
    """Fewer captured examples than `spec.training.minExamples`."""


def train(
    job: Job, embedder: Embedder | None = None, version: str | None = None
) -> ArtifactManifest:
    """Train a new version from the snapshot; it is not promoted until evaluated.

    `version` names it (the operator's run: the same run never trains twice, so a version
    that is already trained is kept as it is); default the next free number."""
    if version is not None:
        if not is_version(version):
            raise ValueError(f"{version!r} is not a version name (v0001, or v + 8 hex digits)")
        if (job.artifacts_dir / version / MANIFEST).is_file():
            log.info("version %s is already trained; kept as it is", version)
            return read_manifest(job.artifacts_dir / version)
    snapshot = Snapshot.load(job.snapshot_dir)
    examples = read_examples(job.snapshot_dir / TRAIN)
    if len(examples) < job.spec.training.min_examples:
        raise NotEnoughExamplesError(
            f"{len(examples)} training examples, spec.training.minExamples is "
            f"{job.spec.training.min_examples}"
        )
    version = version or next_version(job.artifacts_dir)
    directory = job.artifacts_dir / version
    started = time.perf_counter()
    if job.spec.student.kind == "classifier":
        from .classifier import train_classifier

        embedder = embedder or default_embedder(job.spec)
        result = train_classifier(examples, snapshot.labels, embedder)
        save_head(directory, result.head)
        manifest = ArtifactManifest(
            version=version,
            kind="classifier",
            student=job.name,
            route=job.spec.teacher.route,
            base_model=job.spec.student.base_model or DEFAULT_EMBEDDING,
            labels=snapshot.labels,
            instructions=snapshot.instructions,
            dim=int(result.head.weights.shape[0]),
            temperature=result.head.temperature,
            gate=job.gate,
            training=result.info(),
        )
    else:
        from .lm import LmTrainConfig, train_lora

        base = job.spec.student.base_model or ""
        info = train_lora(
            examples,
            directory,
            LmTrainConfig(
                base_model=base,
                epochs=job.spec.training.epochs,
                learning_rate=job.spec.training.learning_rate,
            ),
        )
        manifest = ArtifactManifest(
            version=version,
            kind="causal-lm",
            student=job.name,
            route=job.spec.teacher.route,
            base_model=base,
            labels=snapshot.labels,
            instructions=snapshot.instructions,
            gate=job.gate,
            training=info,
        )
    manifest.training["wall_seconds"] = round(time.perf_counter() - started, 3)
    manifest.training["snapshot"] = {"train": snapshot.train, "held_out": snapshot.held_out}
    write_manifest(directory, manifest)
    log.info("trained %s version %s", job.spec.student.kind, version)
    return manifest


def _predict(
    manifest: ArtifactManifest, directory: Path, texts: Sequence[str], embedder: Embedder | None
) -> tuple[list[str], list[float], float]:
    """Student answers, confidences and seconds per request for the held-out texts."""
    started = time.perf_counter()
    if manifest.kind == "classifier":
        from .classifier import embed_texts

        head = load_head(directory, manifest)
        assert embedder is not None
        preds = head.predict(embed_texts(embedder, texts))
        labels = [p.label for p in preds]
        conf = [p.confidence for p in preds]
    else:
        from .lm import predict_labels

        labels, conf = predict_labels(directory, texts, manifest.labels)
    per_request = (time.perf_counter() - started) / max(len(texts), 1)
    return labels, conf, per_request


def evaluate(
    job: Job,
    version: str | None = None,
    embedder: Embedder | None = None,
    promote: bool = True,
) -> dict[str, Any]:
    """Evaluate a version (default the newest) on the held-out split, write its report, and
    promote it when the gate passes (never otherwise). With `promote`, a promoted version that
    fails (a stricter gate, another threshold) is promoted no more: the manifest always says
    how the version fared in its latest evaluation."""
    if version:
        if not (job.artifacts_dir / version / MANIFEST).is_file():
            raise LookupError(f"no trained version {version} under {job.artifacts_dir}")
        manifest = read_manifest(job.artifacts_dir / version)
    else:
        versions = list_versions(job.artifacts_dir)
        if not versions:
            raise LookupError(f"no trained version under {job.artifacts_dir}")
        manifest = versions[-1]
    directory = job.artifacts_dir / manifest.version
    snapshot = Snapshot.load(job.snapshot_dir)
    held = read_examples(job.snapshot_dir / HELD_OUT)
    if manifest.kind == "classifier" and embedder is None:
        embedder = default_embedder(job.spec)
    predicted, confidence, seconds = _predict(manifest, directory, [e.text for e in held], embedder)
    quality = evaluate_predictions(
        predicted,
        confidence,
        [e.label for e in held],
        manifest.labels,
        threshold=job.gate.confidence_threshold,
        min_agreement=job.gate.min_agreement,
        min_coverage=job.gate.min_coverage,
    )
    costs = cost_structure(
        teacher_cost_per_request=snapshot.teacher_cost_per_request,
        coverage=quality["at_threshold"]["coverage"],
        # Captures are a sample of the route's traffic (`capture.sampleRate`).
        requests_per_day=snapshot.requests_per_day / max(job.spec.capture.sample_rate, 1e-6),
        training_seconds=float(manifest.training.get("wall_seconds", 0.0)),
        node_price_per_hour=job.spec.training.node_price_per_hour,
        serving_cost_per_hour=job.spec.serving.cost_per_hour,
        evaluation_sample_rate=job.spec.routing.evaluation_sample_rate,
    )
    passed = bool(quality["gate"]["passed"])
    report = {
        "student": job.name,
        "route": job.spec.teacher.route,
        "version": manifest.version,
        "kind": manifest.kind,
        "evaluated_at": now_iso(),
        "examples": snapshot.train + snapshot.held_out,
        "held_out_examples": len(held),
        "seconds_per_request": round(seconds, 6),
        "quality": quality,
        "costs": costs,
        "promoted": promote and passed,
    }
    write_report(directory, report)
    manifest.evaluated = True
    manifest.gate_passed = passed
    manifest.metrics = {
        "agreement": quality["agreement"],
        "agreement_with_fallback": quality["at_threshold"]["agreement_with_fallback"],
        "coverage": quality["at_threshold"]["coverage"],
        "ece": quality["ece"],
        "macro_f1": quality["macro_f1"],
        "net_saving_per_day_usd": costs["net_saving_per_day_usd"],
        "break_even_days": costs["break_even_days"],
    }
    if promote and passed:
        manifest.promoted = True
        manifest.promoted_at = now_iso()
    elif promote:
        manifest.promoted = False
    write_manifest(directory, manifest)
    log.info(
        "evaluated %s: agreement %.3f with fallback, coverage %.3f, gate %s",
        manifest.version,
        quality["at_threshold"]["agreement_with_fallback"],
        quality["at_threshold"]["coverage"],
        "passed" if passed else "failed",
    )
    return report
