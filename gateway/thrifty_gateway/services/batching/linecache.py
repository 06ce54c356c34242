"""Batch lines and the exact cache: a line first looks up the gateway's exact cache (same key,
scope and eligibility rules as the cache stage); a provider or direct answer fills it.

Only routes whose cache policy has the exact layer on a shared Redis take part: a worker's
in-memory store would help no one. The semantic layer is left to interactive traffic (it
would load an embedding model into every worker).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from thrifty_core.api.cachepolicy import CachePolicySpec
from thrifty_core.config import GatewayConfig

from ..cache.eligibility import answer_ineligible, request_ineligible
from ..cache.entry import CachedAnswer, Codec
from ..cache.exact import ExactStore, RedisExactStore, StoreUnavailable
from ..cache.keys import (
    canonical_request,
    exact_key,
    policy_keyspace,
    route_keyspace,
    scope_of,
)
from .model import Line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _RouteCache:
    spec: CachePolicySpec
    store: ExactStore
    keyspace: str
    primary: str  # "<provider>/<model>" of the route's first target, as the cache stage keys


class ExactLineCache:
    """`LineCache` over the exact layer of each route's cache policy."""

    def __init__(
        self, routes: dict[str, _RouteCache], stores: list[ExactStore], gateway: str = ""
    ) -> None:
        self._routes = routes
        self._stores = stores
        self._gateway = gateway  # in the entries' scope, as the cache stage puts it
        self.hits = 0

    @classmethod
    def from_config(cls, config: GatewayConfig) -> ExactLineCache | None:
        opened: dict[str, tuple[CachePolicySpec, ExactStore, str]] = {}
        routes: dict[str, _RouteCache] = {}
        for route in config.routes:
            name = route.cache_policy or config.default_cache_policy
            policy = config.cache_policies.get(name) if name else None
            if policy is None or not policy.spec.exact.enabled or not policy.stores.redis_url:
                continue
            url = policy.stores.redis_url
            if name not in opened:
                spec, stores = policy.spec, policy.stores
                # The gateway's keyspace: a line is answered from, and stored for, its cache.
                keyspace = policy_keyspace(str(name), stores.owner, stores.keyspace_version)
                password = (
                    stores.redis_password.read_store_credential() if stores.redis_password else None
                )
                store: ExactStore = RedisExactStore(
                    url,
                    f"thrifty:cache:{keyspace}:",
                    Codec(spec.exact.compress),
                    spec.exact.max_entry_bytes,
                    password=password,
                    timeout=1.0,
                )
                opened[str(name)] = (spec, store, keyspace)
            spec, shared, keyspace = opened[str(name)]
            target = route.targets[0]
            routes[route.name] = _RouteCache(
                spec, shared, keyspace, f"{target.provider}/{target.model}"
            )
        if not routes:
            return None
        return cls(routes, [s for _, s, _ in opened.values()], config.ledger.gateway)

    def _key(self, line: Line) -> tuple[_RouteCache, str] | None:
        cache = self._routes.get(line.route)
        if cache is None or line.endpoint != "chat" or not line.cache:
            return None
        if request_ineligible(line.body, cache.spec.eligibility) is not None:
            return None
        canonical = canonical_request(line.body, cache.primary)
        scope = scope_of(line.tenant, cache.spec.scope, self._gateway)
        return cache, exact_key(canonical, route_keyspace(cache.keyspace, line.route), scope)

    async def get(self, line: Line) -> tuple[CachedAnswer | None, str | None]:
        found = self._key(line)
        if found is None:
            return None, None
        cache, key = found
        try:
            entry, fence = await cache.store.lookup(key)
        except StoreUnavailable:
            return None, None
        if entry is None or entry.age() > cache.spec.exact.ttl_seconds:
            return None, fence
        self.hits += 1
        return entry, fence

    async def put(self, line: Line, answer: dict[str, Any]) -> None:
        found = self._key(line)
        if found is None:
            return
        cache, key = found
        if line.fence is None:
            return  # no fence read with the lookup: a purge since could not be told
        if answer_ineligible(200, answer, cache.spec.eligibility) is not None:
            return
        entry = CachedAnswer(
            body=answer,
            tenant=line.tenant,
            route=line.route,
            # The target model the key was built with, as the cache stage labels its entries (a
            # purge by model finds both); the answer's own name may be a dated snapshot.
            model=cache.primary.split("/", 1)[-1],
            gateway=self._gateway,
        )
        try:
            # A purge that started since the lookup (a provider job runs for hours) fences the
            # answer out, as for interactive answers: it may be what the purge meant to remove.
            await cache.store.put(key, entry, cache.spec.exact.ttl_seconds, line.fence)
        except StoreUnavailable:
            log.warning("exact cache unavailable; batch answer not stored")

    async def aclose(self) -> None:
        for store in self._stores:
            await store.aclose()
