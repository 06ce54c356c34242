"""Prometheus metrics of the distill stage, on the gateway app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class DistillMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "thrifty_distill_requests",
            "Requests on student routes, by who answered and why.",
            ["student", "served_by", "reason"],
            registry=registry,
        )
        self.agreement = Gauge(
            "thrifty_distill_agreement",
            "Rolling agreement of the student with the teacher (evaluation samples, shadow).",
            ["student"],
            registry=registry,
        )
        self.comparisons = Counter(
            "thrifty_distill_comparisons",
            "Student/teacher comparisons, by result.",
            ["student", "result"],
            registry=registry,
        )
        self.demoted = Gauge(
            "thrifty_distill_demoted",
            "1 while the student is demoted (the route is back on the teacher).",
            ["student"],
            registry=registry,
        )
        self.captured = Counter(
            "thrifty_distill_captured",
            "Teacher answers captured to the dataset store.",
            ["student", "source"],
            registry=registry,
        )
        self.failures = Counter(
            "thrifty_distill_student_failures",
            "Student calls that failed (error, malformed answer, timeout): the teacher answered.",
            ["student", "error"],
            registry=registry,
        )
        self.latency = Histogram(
            "thrifty_distill_student_seconds",
            "Student inference time.",
            ["student"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
