"""In-process classifier student: shared sentence embeddings + a calibrated softmax head.

The gateway runs this on the request path (one embedding and one small matrix product, a few
milliseconds on one core); the distill component trains the head (`thrifty_distill.classifier`)
and writes it with `save_head`. Confidence is the temperature-scaled softmax maximum, so a
threshold of 0.8 means "right about 80% of the time" on the calibration split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..embedding.protocol import Embedder
from .artifact import HEAD, ArtifactManifest, read_manifest, resolve_version

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    confidence: float


def softmax(logits: FloatArray, temperature: float = 1.0) -> FloatArray:
    """Row-wise softmax of `logits / temperature` (numerically stable)."""
    import numpy as np

    z = logits / np.float32(max(temperature, 1e-6))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


@dataclass(frozen=True)
class ClassifierHead:
    """Linear head over embeddings: logits = X @ weights + bias."""

    weights: FloatArray  # (dim, classes)
    bias: FloatArray  # (classes,)
    labels: tuple[str, ...]
    temperature: float = 1.0

    def logits(self, embeddings: FloatArray) -> FloatArray:
        out: FloatArray = embeddings @ self.weights + self.bias
        return out

    def proba(self, embeddings: FloatArray) -> FloatArray:
        """Calibrated class probabilities, shape (n, classes)."""
        return softmax(self.logits(embeddings), self.temperature)

    def predict(self, embeddings: FloatArray) -> list[Prediction]:
        p = self.proba(embeddings)
        best = p.argmax(axis=1)
        return [
            Prediction(self.labels[int(i)], float(p[row, int(i)])) for row, i in enumerate(best)
        ]


def save_head(directory: Path, head: ClassifierHead) -> None:
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    with (directory / HEAD).open("wb") as fh:
        np.savez(
            fh,
            weights=head.weights.astype(np.float32),
            bias=head.bias.astype(np.float32),
            temperature=np.float32(head.temperature),
        )


def load_head(directory: Path, manifest: ArtifactManifest | None = None) -> ClassifierHead:
    import numpy as np

    manifest = manifest or read_manifest(directory)
    with np.load(directory / HEAD) as data:
        weights = np.ascontiguousarray(data["weights"], dtype=np.float32)
        bias = np.ascontiguousarray(data["bias"], dtype=np.float32)
        temperature = float(data["temperature"])
    if weights.shape[1] != len(manifest.labels):
        raise ValueError(f"{directory}: head has {weights.shape[1]} classes, labels differ")
    return ClassifierHead(weights, bias, tuple(manifest.labels), temperature)


class ClassifierStudent:
    """A loaded classifier version ready to answer."""

    def __init__(self, manifest: ArtifactManifest, head: ClassifierHead, embedder: Embedder):
        if embedder.dim != head.weights.shape[0]:
            raise ValueError(
                f"student {manifest.version} expects {head.weights.shape[0]}-d embeddings, "
                f"the embedder gives {embedder.dim}"
            )
        self.manifest = manifest
        self.head = head
        self.embedder = embedder

    @property
    def version(self) -> str:
        return self.manifest.version

    @classmethod
    def load(
        cls, root: Path, embedder: Embedder, pinned: str | None = None
    ) -> ClassifierStudent | None:
        """The serving version under `root` (pinned or newest promoted), or None."""
        manifest = resolve_version(root, pinned)
        if manifest is None:
            return None
        if manifest.kind != "classifier":
            raise ValueError(f"student version {manifest.version} is a {manifest.kind}")
        return cls(manifest, load_head(root / manifest.version, manifest), embedder)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        if not texts:
            return []
        return self.head.predict(self.embedder.embed(texts))
