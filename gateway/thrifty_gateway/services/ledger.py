"""The cost ledger: what every request cost, what it would have cost, what each lever saved.

Entries aggregate into hourly buckets per (tenant, route, model) in memory (bounded by the
retention) and into Prometheus counters. `summary()` is this replica's `/v1/thrifty/usage`
body; `usage()` is what the endpoint serves: with `ledger.redisUrl` set, the buckets every
replica shares in Redis (ledger_shared.py), else (or while Redis fails) this replica's own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from thrifty_core.prices import LEVERS, Usage

from .metrics import Metrics

if TYPE_CHECKING:
    from thrifty_core.config import LedgerConfig

    from .ledger_shared import SharedBuckets

log = logging.getLogger(__name__)

HOUR = 3600
DAY = 86400
LATEST = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last second `datetime` holds


@dataclass(slots=True)
class Totals:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    baseline_usd: float = 0.0
    saved_usd: dict[str, float] = field(default_factory=dict)
    served_by_lever: dict[str, int] = field(default_factory=dict)
    served_by_tier: dict[str, int] = field(default_factory=dict)

    def add(self, other: Totals) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens
        self.cost_usd += other.cost_usd
        self.baseline_usd += other.baseline_usd
        # Copies (one C call each, whole under the GIL): `usage()` sums live buckets in a worker
        # thread while the loop may add a key to one of them.
        for k, v in other.saved_usd.copy().items():
            self.saved_usd[k] = self.saved_usd.get(k, 0.0) + v
        for k, n in other.served_by_lever.copy().items():
            self.served_by_lever[k] = self.served_by_lever.get(k, 0) + n
        for k, n in other.served_by_tier.copy().items():
            self.served_by_tier[k] = self.served_by_tier.get(k, 0) + n

    def as_dict(self) -> dict[str, Any]:
        saved = {lever: round(self.saved_usd.get(lever, 0.0), 8) for lever in LEVERS}
        return {
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cost_usd": round(self.cost_usd, 8),
            "baseline_cost_usd": round(self.baseline_usd, 8),
            "saved_usd": round(sum(self.saved_usd.values()), 8),
            "saved_by_lever_usd": saved,
            "served_by_lever": {lever: self.served_by_lever.get(lever, 0) for lever in LEVERS},
            "served_by_tier": dict(sorted(self.served_by_tier.items())),
        }


@dataclass(frozen=True, slots=True)
class Entry:
    """One request as the ledger records it."""

    tenant: str
    route: str
    model: str
    usage: Usage
    cost_usd: float
    savings: dict[str, float]
    lever: str | None = None
    error: bool = False
    tier: str | None = None  # tier that answered, on routes with tiering


Key = tuple[int, str, str, str]
Bucket = Literal["hour", "day"]


class Ledger:
    """In-memory hourly buckets plus Prometheus counters (and the shared buckets, if any)."""

    def __init__(
        self,
        metrics: Metrics,
        retention_hours: int = 24 * 14,
        clock: Callable[[], float] = time.time,
        shared: SharedBuckets | None = None,
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._retention = retention_hours * HOUR
        self._buckets: dict[Key, Totals] = {}
        self._records = 0
        self.shared = shared

    def record(self, entry: Entry) -> None:
        now = self._clock()
        key = (int(now // HOUR) * HOUR, entry.tenant, entry.route, entry.model)
        u = entry.usage
        saved = sum(entry.savings.values())
        delta = Totals(
            requests=1,
            errors=int(entry.error),
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            cached_tokens=u.cached_tokens,
            cost_usd=entry.cost_usd,
            baseline_usd=entry.cost_usd + saved,
            saved_usd=dict(entry.savings),
            served_by_lever={entry.lever: 1} if entry.lever else {},
            served_by_tier={entry.tier: 1} if entry.tier else {},
        )
        self._buckets.setdefault(key, Totals()).add(delta)
        if self.shared is not None:
            self.shared.add(key, delta)

        m = self._metrics
        t, r, mod = entry.tenant, entry.route, entry.model
        if u.prompt_tokens:
            m.child(m.tokens, t, r, mod, "prompt").inc(u.prompt_tokens)
        if u.completion_tokens:
            m.child(m.tokens, t, r, mod, "completion").inc(u.completion_tokens)
        if entry.cost_usd:
            m.child(m.cost, t, r, mod).inc(entry.cost_usd)
        if entry.cost_usd or saved:
            m.child(m.baseline, t, r).inc(entry.cost_usd + saved)
        for lever, usd in entry.savings.items():
            if usd > 0:
                m.child(m.saved, t, r, lever).inc(usd)
            elif usd < 0:
                m.child(m.lost, t, r, lever).inc(-usd)

        self._records += 1
        if self._records % 10_000 == 0:
            self._expire(now)

    def _expire(self, now: float) -> None:
        cutoff = now - self._retention
        for key in [k for k in self._buckets if k[0] < cutoff]:
            del self._buckets[key]

    def summary(
        self,
        *,
        since: float | None = None,
        bucket: Bucket | None = None,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        """This replica's totals overall and per tenant/route/model (and per time bucket)."""
        body = summarise(self._buckets.items(), since, bucket, tenant, self._clock())
        return {**body, "source": "memory"}

    async def usage(
        self,
        *,
        since: float | None = None,
        bucket: Bucket | None = None,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        """The `/v1/thrifty/usage` body: every replica's figures when the ledger is shared
        (this replica's pending ones written first), this replica's when not or when Redis
        fails (`"source": "memory"` says so). Summed in a worker thread: two weeks of hourly
        buckets take a second or more, which would stall every request on the event loop."""
        shared = self.shared
        source = "redis"
        buckets: list[tuple[Key, Totals]] | None = None
        if shared is not None:
            try:
                if not shared.failing:  # a down Redis costs the reader one timeout, not two
                    await shared.flush()
                buckets = await shared.read(since)
            except Exception as exc:
                shared.errors.labels("read").inc()
                log.warning("shared ledger unreadable; serving this replica's figures: %s", exc)
        if buckets is None:
            # The list of this replica's buckets is taken on the loop (record() adds to the
            # dict meanwhile); their totals are read in the thread.
            buckets, source = list(self._buckets.items()), "memory"
        body = await asyncio.to_thread(summarise, buckets, since, bucket, tenant, self._clock())
        return {**body, "source": source}

    async def aclose(self) -> None:
        if self.shared is not None:
            await self.shared.aclose()


def open_ledger(metrics: Metrics, config: LedgerConfig) -> Ledger:
    """The gateway's ledger: shared through Redis when `redisUrl` is set (memory otherwise)."""
    shared = None
    if config.redis_url:
        from .ledger_shared import SharedBuckets

        secret = config.redis_password
        shared = SharedBuckets.from_url(
            config.redis_url,
            metrics.registry,
            config.retention_hours,
            password=secret.read_store_credential() if secret else None,
            gateway=config.gateway,
        )
    return Ledger(metrics, config.retention_hours, shared=shared)


def summarise(
    buckets: Iterable[tuple[Key, Totals]],
    since: float | None,
    bucket: Bucket | None,
    tenant: str | None,
    now: float,
) -> dict[str, Any]:
    """Totals overall and per tenant/route/model (and per time bucket when asked)."""
    total = Totals()
    groups: dict[str, dict[str, Totals]] = {"tenant": {}, "route": {}, "model": {}}
    series: dict[tuple[int, str, str, str], Totals] = {}
    width = DAY if bucket == "day" else HOUR
    first: float | None = None  # the earliest hour summed
    for (start, ten, route, model), t in buckets:
        if tenant is not None and ten != tenant:
            continue
        if since is not None and start + HOUR <= since:
            continue
        total.add(t)
        first = start if first is None else min(first, start)
        for name, value in (("tenant", ten), ("route", route), ("model", model)):
            groups[name].setdefault(value, Totals()).add(t)
        if bucket:
            skey = (start // width * width, ten, route, model)
            series.setdefault(skey, Totals()).add(t)
    out: dict[str, Any] = {
        "object": "thrifty.usage",
        "since": _iso(since) if since is not None else None,
        # Where the figures start: the hour of the earliest request summed (hourly buckets).
        "from": _iso(first) if first is not None else None,
        "generated_at": _iso(now),
        "totals": total.as_dict(),
        "by_tenant": [{"tenant": k, **v.as_dict()} for k, v in sorted(groups["tenant"].items())],
        "by_route": [{"route": k, **v.as_dict()} for k, v in sorted(groups["route"].items())],
        "by_model": [{"model": k, **v.as_dict()} for k, v in sorted(groups["model"].items())],
    }
    if bucket:
        out["bucket"] = bucket
        out["buckets"] = [
            {"start": _iso(s), "tenant": ten, "route": r, "model": m, **t.as_dict()}
            for (s, ten, r, m), t in sorted(series.items())
        ]
    return out


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def parse_since(value: str | None) -> float | None:
    """`since` as epoch seconds or an ISO-8601 time (naive means UTC)."""
    if not value:
        return None
    try:
        ts = float(value)
    except ValueError:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ts = parsed.timestamp()
    if not 0 <= ts <= LATEST:  # nan, inf and times `datetime` cannot hold
        raise ValueError(f"since must be between 0 and {LATEST:.0f}")
    return ts
