"""Operator settings (environment, THRIFTY_OPERATOR_*) and how they configure kopf."""

from __future__ import annotations

import logging
from typing import Literal

import kopf
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .apply import FIELD_MANAGER
from .builders.defaults import Defaults

PREFIX = "thrifty.dev"
FINALIZER = f"{PREFIX}/finalizer"


class OperatorSettings(BaseSettings):
    """Images the children run and how often the operator re-checks them."""

    model_config = SettingsConfigDict(env_prefix="THRIFTY_OPERATOR_", extra="ignore")

    gateway_image: str = Defaults.gateway_image
    operator_image: str = Defaults.operator_image
    distill_image: str = Defaults.distill_image
    distill_lm_image: str = Defaults.distill_lm_image
    vllm_image: str = Defaults.vllm_image
    qdrant_image: str = Defaults.qdrant_image
    redis_image: str = Defaults.redis_image
    shared_access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] = "ReadWriteMany"
    drift_interval_seconds: float = Field(
        default=60.0, gt=0, description="How often children are re-applied and status refreshed."
    )
    progress_interval_seconds: float = Field(
        default=5.0, gt=0, description="Re-check interval while a resource is not Ready yet."
    )
    retrain_after_seconds: float = Field(
        default=900.0,
        gt=0,
        description="A failed train or evaluate Job, or an evaluate Job that wrote no report, "
        "is run again after this long.",
    )
    collection_delete_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="The CachePolicy finalizer waits this long (from deletionTimestamp) for the "
        "collection delete Job, then lets the policy go with a Warning Event.",
    )
    instance: str = Field(
        default="",
        max_length=253,
        description="This installation (the chart sets `<release namespace>/<release name>`): "
        "stamped on the resources it reconciles, so that an operator restarted without one of "
        "its namespaces releases the finalizers there (`release`). Empty: nothing is stamped "
        "or released.",
    )
    field_manager: str = FIELD_MANAGER
    log_format: Literal["json", "plain"] = "json"
    health_port: int = Field(default=8081, ge=0, le=65535, description="0 disables /healthz.")

    def defaults(self) -> Defaults:
        return Defaults(
            gateway_image=self.gateway_image,
            operator_image=self.operator_image,
            distill_image=self.distill_image,
            distill_lm_image=self.distill_lm_image,
            vllm_image=self.vllm_image,
            qdrant_image=self.qdrant_image,
            redis_image=self.redis_image,
            shared_access_mode=self.shared_access_mode,
        )


def configure_kopf(settings: kopf.OperatorSettings, *, namespaced: bool = False) -> None:
    """kopf's own knobs: state in annotations (status is schema-pruned), our finalizer name,
    Events for warnings and above, bounded watch and request timeouts, backoff on errors.

    `namespaced` (exact `--namespace` names): no namespace scanning. kopf stops watching a
    namespace as soon as it is marked for deletion, before the finalizers of the objects in it
    ran, which would hold the namespace in Terminating forever (nolar/kopf#1088); the watched
    namespaces are known exactly, so nothing is lost (CRDs come before the operator, as the
    chart installs them).
    """
    settings.scanning.disabled = namespaced
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.queueing.error_delays = (1, 2, 5, 10, 30, 60)
    settings.execution.max_workers = 8
