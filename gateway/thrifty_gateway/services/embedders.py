"""The sentence embedder the gateway's in-process classifiers share (distill students, tier
difficulty classifiers): the app's own when it has one, else one local embedder made when
first needed and kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from thrifty_core.embedding.protocol import Embedder


@dataclass(slots=True)
class EmbedderOnce:
    """Call it for the embedder: `resources.embedder` when set, else one `LocalEmbedder`
    (made on the first call, then kept; every classifier and its reloads share it)."""

    resources: Any
    made: list[Embedder] = field(default_factory=list)

    def __call__(self) -> Embedder:
        found: Embedder | None = getattr(self.resources, "embedder", None)
        if found is not None:
            return found
        if not self.made:
            from thrifty_core.embedding.local import LocalEmbedder

            self.made.append(LocalEmbedder(threads=1))
        return self.made[0]
