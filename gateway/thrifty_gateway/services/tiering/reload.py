"""Loading difficulty classifiers, and picking them up when a new version is promoted (or the
pin changes), as the distill students are: a gateway started before the first promotion gets its
`maxDifficulty` rules working without a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from thrifty_core.api.costcontrol import Tiering
from thrifty_core.embedding.protocol import Embedder
from thrifty_core.student.artifact import version_to_load

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
        current = getattr(plan.scorer, "version", None)
        manifest = await asyncio.to_thread(
            version_to_load, Path(spec.artifact_path), spec.version, current
        )
        if manifest is None:
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


def load_scorer(tiering: Tiering, embedder: Callable[[], Embedder]) -> DifficultyScorer | None:
    assert tiering.classifier is not None
    try:
        return load_classifier(tiering.classifier, embedder())
    except (OSError, ValueError):
        log.exception("difficulty classifier cannot be loaded; maxDifficulty rules never match")
        return None
