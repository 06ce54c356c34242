"""What builders need beyond a spec: default images and fixed ports (built from settings)."""

from __future__ import annotations

from dataclasses import dataclass

GATEWAY_PORT = 8080
QDRANT_HTTP_PORT = 6333
QDRANT_GRPC_PORT = 6334
REDIS_PORT = 6379
STUDENT_PORT = 8000
CONFIG_DIR = "/etc/thrifty"
CONFIG_FILE = "gateway.yaml"
SECRETS_DIR = "/var/run/thrifty/secrets"
FILES_DIR = "/var/lib/thrifty/files"
ARTIFACTS_DIR = "/var/lib/thrifty/artifacts"


@dataclass(frozen=True)
class Defaults:
    """Images used when a spec does not override them."""

    gateway_image: str = "ghcr.io/thrifty-dev/thrifty-gateway:0.1.0"
    operator_image: str = "ghcr.io/thrifty-dev/thrifty-operator:0.1.0"
    distill_image: str = "ghcr.io/thrifty-dev/thrifty-distill:0.1.0"
    # The distill image with torch, transformers and peft (`EXTRAS="--extra distill-lm"`):
    # causal-lm students' train and evaluate Jobs run it.
    distill_lm_image: str = "ghcr.io/thrifty-dev/thrifty-distill-lm:0.1.0"
    vllm_image: str = "docker.io/vllm/vllm-openai:v0.6.3"
    qdrant_image: str = "docker.io/qdrant/qdrant:v1.18.3"
    redis_image: str = "docker.io/library/redis:7.4.1-alpine"
    # Volumes shared by several pods (batch files, capture/artifacts) need ReadWriteMany in a
    # real cluster; single-node development clusters (kind's local-path) only offer RWO.
    shared_access_mode: str = "ReadWriteMany"
