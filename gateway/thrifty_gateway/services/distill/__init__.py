"""Distillation in the gateway: capture, student routing, confidence fallback, evaluation.

For every `students` entry of the config (one per `DistilledModel`), on its route:

* **capture** — sampled teacher answers (tenant, request, answer, usage, optional logprobs)
  are redacted and appended to the dataset store (`captureDir`), capped, skipped on
  `x-thrifty-no-capture` and for tenants outside `capture.tenants` (when set);
* **routing** — `shadow`: the student predicts, the teacher answers, agreement is measured;
  `canary`: a stable `canaryPercent` of requests may go to the student; `active`: all
  eligible requests may. The student answers only when its confidence reaches
  `confidenceThreshold`; otherwise the teacher answers (and is captured). Every answer on a
  student route carries `x-thrifty-served-by: student|teacher`. Student answers are priced at
  the serving cost (`costPerHour` x inference time) and the ledger books the difference to
  the teacher's price under the `distill` lever;
* **continuous evaluation** — `evaluationSampleRate` of student answers also go to the
  teacher after the response; the rolling agreement is a metric and in `status()`; below the
  version's gate (`min_agreement` in its manifest) the student is demoted (traffic back to the
  teacher, a warning, `thrifty_distill_demoted` = 1) until a new version is loaded. Teacher
  answers from evaluation are captured too: fresh data for the next training run.

`classifier` students run in-process (the shared embedder + the artifact's head; a new
promoted version under `artifactPath` is picked up every `reload_seconds`); `causal-lm`
students are called at `endpoint` (vLLM with the LoRA adapter).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from thrifty_core.config import GatewayConfig, StudentConfig
from thrifty_core.student.artifact import Gate, resolve_version, version_to_load

from ...state import GatewayState
from ..embedders import EmbedderOnce
from ..pipeline import StageFactory
from .agreement import AgreementTracker
from .capture import CaptureSink
from .demotions import DemotionStore
from .metrics import DistillMetrics
from .predictors import ClassifierPredictor, EndpointPredictor, Predictor
from .stage import SERVED_BY, DistillStage, StudentRoute

__all__ = ["SERVED_BY", "DistillStage", "distill_stage_factory"]

log = logging.getLogger(__name__)

DEFAULT_MIN_AGREEMENT = Gate().min_agreement


def load_predictor(cfg: StudentConfig, embedder_for: Any) -> tuple[Predictor | None, float]:
    """The serving predictor of a student and the gate's agreement floor."""
    if not cfg.serve:
        return None, DEFAULT_MIN_AGREEMENT
    if cfg.kind == "causal-lm":
        if not cfg.endpoint:
            return None, DEFAULT_MIN_AGREEMENT
        model = cfg.served_model or cfg.name
        return (
            EndpointPredictor(
                cfg.endpoint,
                model,
                version=cfg.version or "",
                labels=cfg.labels,
                timeout=cfg.timeout_seconds,
                api_key=cfg.api_key,
            ),
            DEFAULT_MIN_AGREEMENT,
        )
    if not cfg.artifact_path:
        return None, DEFAULT_MIN_AGREEMENT
    root = Path(cfg.artifact_path)
    try:
        manifest = resolve_version(root, cfg.version)
    except LookupError as exc:
        log.error("student %s: %s; the route stays on the teacher", cfg.name, exc)
        return None, DEFAULT_MIN_AGREEMENT
    if manifest is None:
        log.info("student %s has no promoted version yet", cfg.name)
        return None, DEFAULT_MIN_AGREEMENT
    predictor = ClassifierPredictor.load(root, embedder_for(), manifest.version)
    return predictor, manifest.gate.min_agreement


async def reload_loop(stage: DistillStage, embedder_for: Any, interval: float) -> None:
    """Pick up newly promoted classifier versions (or a changed pin). A version that cannot
    be read or loaded (a half-copied or malformed artifact) is logged and skipped: the loop
    keeps running, and the student keeps serving the version it has."""
    while True:
        await asyncio.sleep(interval)
        await stage.sync_demotions()
        for sr in stage.students.values():
            try:
                await reload_one(stage, sr, embedder_for)
            except Exception as exc:  # the loop must outlive any one bad artifact
                log.warning(
                    "student %s: reload failed (%s); keeping version %s",
                    sr.name,
                    type(exc).__name__,
                    sr.version or "none",
                )


async def reload_one(stage: DistillStage, sr: StudentRoute, embedder_for: Any) -> None:
    """Load a student's newly promoted (or newly pinned) classifier version, if any."""
    cfg = sr.config
    if cfg.kind != "classifier" or not cfg.artifact_path or not cfg.serve:
        return
    manifest = await asyncio.to_thread(
        version_to_load, Path(cfg.artifact_path), cfg.version, sr.version
    )
    if manifest is None:
        return
    predictor, floor = await asyncio.to_thread(load_predictor, cfg, embedder_for)
    old = sr.predictor
    sr.predictor = predictor
    sr.tracker = AgreementTracker(min_agreement=floor)
    sr.demoted = False
    sr.demoted_reason = ""
    stage.metrics.demoted.labels(sr.name).set(0)
    log.info("student %s now serves version %s", cfg.name, sr.version)
    if old is not None:
        await old.aclose()


def distill_stage_factory(reload_seconds: float = 15.0) -> StageFactory:
    """The stage factory for `create_app` (None when the config declares no students)."""

    async def factory(config: GatewayConfig, state: GatewayState, /) -> DistillStage | None:
        if not config.students:
            return None
        embedder_for = EmbedderOnce(state)
        students: dict[str, StudentRoute] = {}
        for cfg in config.students:
            predictor, floor = await asyncio.to_thread(load_predictor, cfg, embedder_for)
            capture = (
                CaptureSink.to_directory(
                    cfg.capture_dir, cfg.capture, route=cfg.route, student=cfg.name
                )
                if cfg.capture_dir
                else None
            )
            students[cfg.route] = StudentRoute(
                config=cfg,
                predictor=predictor,
                capture=capture,
                tracker=AgreementTracker(min_agreement=floor),
            )
            log.info(
                "student %s on route %s: mode %s, version %s",
                cfg.name,
                cfg.route,
                cfg.mode,
                predictor.version if predictor else "none",
            )
        ledger = state.ledger.shared
        demotions = (
            DemotionStore(ledger.client, config.ledger.gateway) if ledger is not None else None
        )
        stage = DistillStage(
            students, state, DistillMetrics(state.metrics.registry), demotions=demotions
        )
        await stage.sync_demotions()
        if reload_seconds > 0:
            task = asyncio.get_running_loop().create_task(
                reload_loop(stage, embedder_for, reload_seconds)
            )
            stage.tasks.add(task)
        return stage

    return factory
