"""The vLLM container arguments for a causal-lm student (the operator builds the Deployment).

vLLM's OpenAI-compatible server loads the base model and serves the LoRA adapter under its
own model name (`--lora-modules name=path`), so the gateway calls it like any provider and
asks for `logprobs` to get the student's confidence.
"""

from __future__ import annotations

from typing import Any

VLLM_PORT = 8000
HEALTH_PATH = "/health"
STARTUP_PERIOD_SECONDS = 10


def vllm_args(
    base_model: str,
    adapter_path: str,
    served_name: str,
    *,
    port: int = VLLM_PORT,
    max_lora_rank: int = 16,
    max_model_len: int = 4096,
    gpu_memory_utilization: float = 0.9,
    tensor_parallel_size: int = 1,
    max_logprobs: int = 20,
    dtype: str = "auto",
    extra: list[str] | None = None,
) -> list[str]:
    """`vllm serve` arguments (the container command is `vllm`) serving `adapter_path` as
    `served_name` on top of `base_model`."""
    if not base_model or not adapter_path or not served_name:
        raise ValueError("base_model, adapter_path and served_name are required")
    if tensor_parallel_size < 1:
        raise ValueError("tensor_parallel_size must be >= 1")
    return [
        "serve",
        base_model,
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--enable-lora",
        "--lora-modules",
        f"{served_name}={adapter_path}",
        "--max-lora-rank",
        str(max_lora_rank),
        "--max-loras",
        "1",
        "--max-model-len",
        str(max_model_len),
        "--gpu-memory-utilization",
        f"{gpu_memory_utilization:g}",
        "--tensor-parallel-size",
        str(tensor_parallel_size),
        "--max-logprobs",
        str(max_logprobs),
        "--dtype",
        dtype,
        *(extra or []),
    ]


def vllm_probes(port: int | str, startup_timeout_seconds: int = 1800) -> dict[str, Any]:
    """The container probes of a vLLM server.

    vLLM answers `/health` only once the base model is downloaded and loaded (minutes for a
    GB-sized model): a startup probe allows `startup_timeout_seconds` for that, and the
    liveness and readiness probes (which would restart a slow starter) begin after it."""
    if startup_timeout_seconds < STARTUP_PERIOD_SECONDS:
        raise ValueError(f"startup_timeout_seconds must be >= {STARTUP_PERIOD_SECONDS}")
    health = {"path": HEALTH_PATH, "port": port}
    return {
        "startupProbe": {
            "httpGet": dict(health),
            "periodSeconds": STARTUP_PERIOD_SECONDS,
            "timeoutSeconds": 5,
            "failureThreshold": -(-startup_timeout_seconds // STARTUP_PERIOD_SECONDS),
        },
        "livenessProbe": {
            "httpGet": dict(health),
            "periodSeconds": 15,
            "timeoutSeconds": 5,
            "failureThreshold": 4,
        },
        "readinessProbe": {
            "httpGet": dict(health),
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
    }
