"""Prometheus metrics of one gateway app (own registry: no global state)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Counters and histograms; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "thrifty_requests",
            "Requests answered.",
            ["tenant", "route", "status", "lever"],
            registry=r,
        )
        self.tokens = Counter(
            "thrifty_tokens", "Tokens by kind.", ["tenant", "route", "model", "kind"], registry=r
        )
        self.cost = Counter(
            "thrifty_cost_usd", "Actual cost, USD.", ["tenant", "route", "model"], registry=r
        )
        self.baseline = Counter(
            "thrifty_baseline_cost_usd",
            "Cost the same requests would have had without Thrifty, USD.",
            ["tenant", "route"],
            registry=r,
        )
        self.saved = Counter(
            "thrifty_saved_usd",
            "Money saved, by lever, USD (gross: see thrifty_lost_usd).",
            ["tenant", "route", "lever"],
            registry=r,
        )
        # A counter cannot go down: what a lever cost beyond the baseline (a cascade's cheap
        # attempt that was paid for and then escalated) is counted here, so that saved - lost
        # per lever, and baseline - cost overall, are the ledger's savings.
        self.lost = Counter(
            "thrifty_lost_usd",
            "Money a lever cost beyond what the request would have cost without it, USD.",
            ["tenant", "route", "lever"],
            registry=r,
        )
        self.duration = Histogram(
            "thrifty_request_duration_seconds",
            "Gateway request duration.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_retries = Counter(
            "thrifty_upstream_retries",
            "Failed upstream attempts, by reason.",
            ["upstream", "reason"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "thrifty_circuit_open",
            "1 while the circuit of an upstream target is open.",
            ["upstream"],
            registry=r,
        )
        self.rejected = Counter(
            "thrifty_rejected",
            "Requests refused before any upstream work.",
            ["reason"],
            registry=r,
        )

        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Counter | Histogram | Gauge, *labels: str) -> Any:
        """`metric.labels(*labels)`, memoised (label sets are bounded by the config)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)
