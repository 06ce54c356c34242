"""Loading difficulty classifiers, and picking them up when a new version is promoted (or the
pin changes), as the distill students are: a gateway started before the first promotion gets its
`maxDifficulty` rules working without a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thrifty_core.api.costcontrol import Tiering
from thrifty_core.embedding.protocol import Embedder
from thrifty_core.student.artifact import resolve_version

from .classifier import DifficultyScorer, load_classifier
from .rules import needs_difficulty

if TYPE_CHECKING:
    from .stage import TierStage

log = logging.getLogger(__name__)


async def reload_scorers(stage: TierStage, embedder: Callable[[], Embedder]) -> list[str]:
    """Load the serving version of every route's classifier that changed; the routes whose
    scorer was replaced."""
    changed: list[str] = []
    for route, plan in list(stage.plans.items()):
        spec = plan.tiering.classifier
        if spec is None or not needs_difficulty(plan.tiering):
            continue
        try:
            manifest = await asyncio.to_thread(
                resolve_version, Path(spec.artifact_path), spec.version
            )
        except (LookupError, OSError, ValueError):
            continue
        current = getattr(plan.scorer, "version", None)
        if manifest is None or manifest.version == current:
            continue
        try:
            scorer = await asyncio.to_thread(load_classifier, spec, embedder())
        except (OSError, ValueError) as exc:
            log.warning(
                "difficulty classifier of %s: cannot load %s: %s", route, manifest.version, exc
            )
            continue
        if scorer is None:
            continue
        stage.plans[route] = dataclasses.replace(plan, scorer=scorer)
        changed.append(route)
        log.info("difficulty classifier of %s now serves version %s", route, manifest.version)
    return changed


async def reload_loop(stage: TierStage, embedder: Callable[[], Embedder], interval: float) -> None:
    """`reload_scorers` every `interval` seconds."""
    while True:
        await asyncio.sleep(interval)
        try:
            await reload_scorers(stage, embedder)
        except Exception:
            log.exception("difficulty classifier reload failed")


@dataclass(slots=True)
class EmbedderOnce:
    """The app's embedder, else one local embedder made when first needed and kept (the
    classifiers of every route and their reloads share it)."""

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


def load_scorer(tiering: Tiering, embedder: Callable[[], Embedder]) -> DifficultyScorer | None:
    assert tiering.classifier is not None
    try:
        return load_classifier(tiering.classifier, embedder())
    except (OSError, ValueError):
        log.exception("difficulty classifier cannot be loaded; maxDifficulty rules never match")
        return None
