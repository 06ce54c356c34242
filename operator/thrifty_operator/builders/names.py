"""Names of the children of each resource (one place, so handlers and tests agree)."""

from __future__ import annotations

from .defaults import GATEWAY_PORT, QDRANT_HTTP_PORT, REDIS_PORT, STUDENT_PORT


def gateway(name: str) -> str:
    return f"{name}-gateway"


def gateway_config(name: str) -> str:
    return f"{name}-gateway-config"


def gateway_endpoint(name: str, namespace: str) -> str:
    return f"http://{gateway(name)}.{namespace}.svc:{GATEWAY_PORT}/v1"


def redis(policy: str) -> str:
    return f"{policy}-redis"


def redis_url(policy: str, namespace: str) -> str:
    return f"redis://{redis(policy)}.{namespace}.svc:{REDIS_PORT}/0"


def qdrant(policy: str) -> str:
    return f"{policy}-qdrant"


def qdrant_url(policy: str, namespace: str) -> str:
    return f"http://{qdrant(policy)}.{namespace}.svc:{QDRANT_HTTP_PORT}"


def collection(policy: str, namespace: str, override: str = "") -> str:
    return override or f"thrifty-{namespace}-{policy}"


def collection_job(policy: str, digest: str) -> str:
    return f"{policy}-collection-{digest[:8]}"


def collection_delete_job(policy: str) -> str:
    return f"{policy}-collection-delete"


def batch_worker(queue: str) -> str:
    return f"{queue}-batch-worker"


def batch_files(queue: str) -> str:
    return f"{queue}-files"


def batch_stream(queue: str, namespace: str) -> str:
    return f"thrifty:{namespace}:{queue}:batch"


def distill_artifacts(model: str) -> str:
    return f"{model}-artifacts"


def distill_resource(model: str) -> str:
    return f"{model}-distill-resource"


def distill_service_account(model: str) -> str:
    return f"{model}-distill"


def train_job(model: str, version: str) -> str:
    return f"{model}-train-{version}"


def eval_job(model: str, version: str) -> str:
    return f"{model}-eval-{version}"


def eval_report(model: str, version: str) -> str:
    return f"{model}-eval-{version}"


def student(model: str) -> str:
    return f"{model}-student"


def student_endpoint(model: str, namespace: str) -> str:
    return f"http://{student(model)}.{namespace}.svc:{STUDENT_PORT}/v1"
