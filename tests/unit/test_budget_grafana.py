"""The Grafana dashboard shipped for the chart queries metrics the gateway really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from thrifty_gateway.services.budgets.stage import BudgetMetrics
from thrifty_gateway.services.hygiene.stage import HygieneMetrics
from thrifty_gateway.services.metrics import Metrics
from thrifty_gateway.services.tiering.stage import TierMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "thrifty-grafana.json"


def exported_names() -> set[str]:
    """Series names as Prometheus stores them (counters get `_total`)."""
    metrics = Metrics()
    owners = [
        metrics,
        TierMetrics(metrics.registry),
        BudgetMetrics(metrics.registry),
        HygieneMetrics(metrics.registry),
    ]
    names: set[str] = set()
    for owner in owners:
        for value in vars(owner).values():
            if isinstance(value, Counter):
                names.add(value._name + "_total")
            elif isinstance(value, Gauge):
                names.add(value._name)
            elif isinstance(value, Histogram):
                names.update(value._name + s for s in ("_bucket", "_sum", "_count"))
    return names


def test_every_panel_queries_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 16
    known = exported_names()
    used = {name for expr in exprs for name in re.findall(r"\bthrifty_[a-z_]+\b", expr)}
    assert used and used <= known, sorted(used - known)
    titles = {p["title"] for p in dashboard["panels"]}
    wanted = {"Spend and savings over time, by lever", "Budget burn-down", "Hit rates by lever"}
    assert wanted <= titles
    assert dashboard["uid"] == "thrifty-savings"
