"""Cache metrics, registered on the gateway's own Prometheus registry."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter


class CacheMetrics:
    def __init__(self, registry: Any) -> None:
        self.lookups = Counter(
            "thrifty_cache_lookups",
            "Cache lookups by layer and result. exact: hit, miss, error; semantic: hit, miss, "
            "error, cooldown, busy; "
            "flight: a request that waited for an identical one already upstream (coalesced: "
            "served its answer, follow_failed: went upstream itself), counted after its exact "
            "miss; all: bypass.",
            ["layer", "result"],
            registry=registry,
        )
        self.errors = Counter(
            "thrifty_cache_errors",
            "Store failures that turned into a cache bypass.",
            ["layer", "op"],
            registry=registry,
        )
        self.guard_rejections = Counter(
            "thrifty_cache_guard_rejections",
            "Semantic candidates above the threshold rejected by the guard, by check.",
            ["check"],
            registry=registry,
        )
        self.stores = Counter(
            "thrifty_cache_stores",
            "Answers stored, or skipped and why.",
            ["result"],
            registry=registry,
        )
