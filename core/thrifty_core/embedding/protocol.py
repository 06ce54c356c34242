"""The embedder contract shared by the semantic cache and the classifier student."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of shape (len(texts), dim)."""

    @property
    def dim(self) -> int:
        """Vector size."""
        ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed `texts`; row i is the unit vector of texts[i]. Thread-safe."""
        ...


@runtime_checkable
class PairScoring(Protocol):
    """Scores how well each candidate text matches a query, in [0, 1]."""

    name: str

    def score(self, query: str, candidates: Sequence[str]) -> npt.NDArray[np.float32]:
        """One score per candidate, in order. Thread-safe."""
        ...
