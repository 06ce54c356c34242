"""Thrifty's own running cost, so that savings can be reported net of it.

`NetSavings` (spec.netSavings) prices CPU, memory and GPU hours and lists Thrifty's workloads,
each charged to a lever (or to `gateway`, the shared overhead). The operator can build that
list from the Deployments and StatefulSets it owns with `component_from_workload` (the lever
comes from the `thrifty.dev/owner-kind` label: a CachePolicy's Qdrant/Redis count against the
cache, a DistilledModel's GPU serving against distillation, and so on).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .api.costcontrol import NetSavings, RunningComponent

OWNER_KIND_LABEL = "thrifty.dev/owner-kind"
LEVER_OF_OWNER_KIND: Mapping[str, str] = {
    "cachepolicy": "cache",
    "batchqueue": "batch",
    "distilledmodel": "distill",
    "llmgateway": "gateway",
}
RUNNING_LEVERS: tuple[str, ...] = ("cache", "batch", "distill", "tier", "gateway")
GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")
# The API server's quantity grammar: a signed decimal, then a binary or decimal SI suffix or a
# decimal exponent (`512e6`; a lone `E` is exa).
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))(?:[eE]([+-]?[0-9]+)|([a-zA-Z]*))$")
_SUFFIX = {
    "": 1.0,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number (`250m` -> 0.25, `1Gi` -> 1073741824)."""
    if isinstance(value, int | float):
        return float(value)
    match = _QUANTITY.match(value.strip())
    if not match:
        raise ValueError(f"not a quantity: {value!r}")
    number, exponent, suffix = match.groups()
    if exponent is not None:
        return float(number) * 10.0 ** int(exponent)
    if suffix not in _SUFFIX:
        raise ValueError(f"not a quantity: {value!r}")
    return float(number) * _SUFFIX[suffix]


def component_from_workload(manifest: Mapping[str, Any]) -> RunningComponent | None:
    """A Deployment or StatefulSet the operator owns as a running component (resource
    requests, else limits, summed over its containers); None for other objects."""
    if manifest.get("kind") not in ("Deployment", "StatefulSet"):
        return None
    meta = manifest.get("metadata") or {}
    lever = LEVER_OF_OWNER_KIND.get((meta.get("labels") or {}).get(OWNER_KIND_LABEL, ""))
    if lever is None:
        return None
    spec = manifest.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    cpu = memory = gpu = 0.0
    for container in pod.get("containers") or ():
        res = container.get("resources") or {}
        wanted = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        cpu += parse_quantity(wanted.get("cpu", 0))
        memory += parse_quantity(wanted.get("memory", 0)) / 2.0**30
        gpu += sum(parse_quantity(wanted.get(name, 0)) for name in GPU_RESOURCES)
    return RunningComponent(
        name=str(meta.get("name", "")),
        lever=lever,
        replicas=int(spec.get("replicas", 1) or 0),
        cpu=round(cpu, 6),
        memory_gib=round(memory, 6),
        gpu=gpu,
    )


def hourly_cost(settings: NetSavings, component: RunningComponent) -> float:
    """USD per hour of one component at the configured prices."""
    per_pod = (
        component.cpu * settings.cpu_hour_usd
        + component.memory_gib * settings.memory_gib_hour_usd
        + component.gpu * settings.gpu_hour_usd
    )
    return per_pod * component.replicas


def hourly_cost_by_lever(settings: NetSavings) -> dict[str, float]:
    """USD per hour of Thrifty's own workloads, per lever (and `gateway`)."""
    out = dict.fromkeys(RUNNING_LEVERS, 0.0)
    for component in settings.components:
        out[component.lever] += hourly_cost(settings, component)
    return out


def net_savings(
    settings: NetSavings, saved_by_lever: Mapping[str, float], hours: float
) -> dict[str, Any]:
    """Gross savings per lever minus what that lever's workloads cost over `hours`; the
    gateway's own cost is taken from the total only."""
    rate = hourly_cost_by_lever(settings)
    running = {lever: round(usd * hours, 8) for lever, usd in rate.items()}
    net = {
        lever: round(saved_by_lever.get(lever, 0.0) - running[lever], 8)
        for lever in RUNNING_LEVERS
        if lever != "gateway"
    }
    gross = sum(saved_by_lever.values())
    return {
        "hours": round(hours, 4),
        "prices": {
            "cpu_hour_usd": settings.cpu_hour_usd,
            "memory_gib_hour_usd": settings.memory_gib_hour_usd,
            "gpu_hour_usd": settings.gpu_hour_usd,
        },
        "running_cost_per_hour_usd": {k: round(v, 8) for k, v in rate.items()},
        "running_cost_usd": running,
        "net_by_lever_usd": net,
        "net_saved_usd": round(gross - sum(running.values()), 8),
    }
