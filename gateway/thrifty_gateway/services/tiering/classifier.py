"""The optional difficulty classifier: a classifier student (trained by the distill pipeline on
labels such as easy/hard) whose probability of the hard labels is the request's difficulty."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from thrifty_core.api.costcontrol import DifficultyClassifier
from thrifty_core.embedding.protocol import Embedder
from thrifty_core.student.classifier import ClassifierStudent

log = logging.getLogger(__name__)


class DifficultyScorer(Protocol):
    """Scores how hard a request is, 0 (easy) to 1 (hard)."""

    def difficulty(self, text: str) -> float: ...


class ClassifierDifficulty:
    """Difficulty = total calibrated probability of the student's hard labels."""

    def __init__(self, student: ClassifierStudent, hard_labels: Sequence[str]) -> None:
        labels = student.head.labels
        self._hard = [i for i, label in enumerate(labels) if label in set(hard_labels)]
        if not self._hard:
            raise ValueError(f"none of the hard labels {list(hard_labels)} is a student label")
        self._student = student

    @property
    def version(self) -> str:
        """The artifact version it serves."""
        return self._student.version

    def difficulty(self, text: str) -> float:
        proba = self._student.head.proba(self._student.embedder.embed([text]))
        return float(sum(proba[0, i] for i in self._hard))


def load_classifier(spec: DifficultyClassifier, embedder: Embedder) -> DifficultyScorer | None:
    """The serving version under `spec.artifactPath`, or None when there is none yet."""
    student = ClassifierStudent.load(Path(spec.artifact_path), embedder, spec.version)
    if student is None:
        log.warning("difficulty classifier has no promoted version yet")
        return None
    return ClassifierDifficulty(student, spec.hard_labels)
