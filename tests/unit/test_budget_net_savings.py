"""Net savings: Thrifty's own running cost per lever, from prices and workloads."""

from __future__ import annotations

from typing import Any

import pytest

from thrifty_core.api.costcontrol import NetSavings, RunningComponent
from thrifty_core.prices import PriceCatalog, Usage
from thrifty_core.running_cost import (
    component_from_workload,
    hourly_cost_by_lever,
    net_savings,
    parse_quantity,
)


def test_quantities() -> None:
    assert parse_quantity("250m") == 0.25
    assert parse_quantity("2") == 2.0
    assert parse_quantity("1Gi") == 2**30
    assert parse_quantity("512Mi") == 2**29
    assert parse_quantity(3) == 3.0
    # Everything else the API server accepts: exponents, P/E and Pi/Ei, n/u, ".5".
    assert parse_quantity("512e6") == 512e6
    assert parse_quantity("5E-3") == pytest.approx(0.005)
    assert parse_quantity("1E") == 1e18  # exa, not an exponent
    assert parse_quantity("2Pi") == 2.0**51
    assert parse_quantity("100u") == pytest.approx(1e-4)
    assert parse_quantity(".5") == 0.5
    for bad in ("lots", "1Xi", "e3", "1.2.3"):
        with pytest.raises(ValueError):
            parse_quantity(bad)


def workload(kind: str, owner_kind: str, **resources: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {"name": "w", "labels": {"thrifty.dev/owner-kind": owner_kind}},
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "a", "resources": {"requests": resources}},
                        {"name": "b", "resources": {"limits": {"cpu": "500m"}}},
                    ]
                }
            },
        },
    }


def test_component_from_owned_workloads() -> None:
    qdrant = component_from_workload(workload("StatefulSet", "cachepolicy", cpu="1", memory="2Gi"))
    assert qdrant == RunningComponent(name="w", lever="cache", replicas=2, cpu=1.5, memory_gib=2)
    student = component_from_workload(
        workload("Deployment", "distilledmodel", cpu="2", memory="8Gi", **{"nvidia.com/gpu": "1"})
    )
    assert student is not None and (student.lever, student.gpu) == ("distill", 1.0)
    assert component_from_workload(workload("Service", "cachepolicy")) is None
    assert component_from_workload(workload("Deployment", "unknown")) is None


def test_net_savings_per_lever() -> None:
    settings = NetSavings(
        cpu_hour_usd=0.05,
        memory_gib_hour_usd=0.01,
        gpu_hour_usd=2.0,
        components=[
            RunningComponent(name="qdrant", lever="cache", replicas=1, cpu=1, memory_gib=4),
            RunningComponent(name="student", lever="distill", replicas=1, gpu=1),
            RunningComponent(name="gateway", lever="gateway", replicas=2, cpu=0.5),
        ],
    )
    assert hourly_cost_by_lever(settings)["cache"] == pytest.approx(0.09)
    out = net_savings(settings, {"cache": 10.0, "distill": 1.0, "tier": 0.5, "batch": 0}, 10)
    assert out["running_cost_usd"]["cache"] == pytest.approx(0.9)
    assert out["net_by_lever_usd"]["cache"] == pytest.approx(9.1)
    # the GPU student costs more than it saved: the lever does not pay for itself
    assert out["net_by_lever_usd"]["distill"] == pytest.approx(-19.0)
    assert out["net_by_lever_usd"]["tier"] == pytest.approx(0.5)
    assert "gateway" not in out["net_by_lever_usd"]
    assert out["net_saved_usd"] == pytest.approx(11.5 - 0.9 - 20 - 0.5)


def test_provider_cached_tokens_are_priced_at_the_cached_input_price() -> None:
    catalog = PriceCatalog()
    full = catalog.cost("gpt-4o", Usage(prompt_tokens=10_000, completion_tokens=0))
    cached = catalog.cost(
        "gpt-4o", Usage(prompt_tokens=10_000, completion_tokens=0, cached_tokens=8_000)
    )
    assert full == pytest.approx(0.025)
    assert cached == pytest.approx((2_000 * 2.5 + 8_000 * 1.25) / 1e6)
