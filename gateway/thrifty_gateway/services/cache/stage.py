"""The cache stage: exact then semantic lookup before the upstream call, storage after it.

Keys: the request is keyed by the model its answer is expected from: on a route with tiering,
the first target of the tier the tiering stage chose before this lookup (`TierDecision`), else
the route's first target. Answers of different tiers therefore never share an entry, and a hit
returns what the chosen tier would answer (see services/tiering/stage.py for which tier answers
are stored: never escalated ones, never unchecked cheap ones on a cascade route).

Lookup order: eligibility -> exact (Redis or memory) -> semantic (embedding of the final user
turn, Qdrant search under hard scope + context filters, the guard's checks on each candidate,
then the pair verifier scores the `maxCandidates` nearest survivors and the first, in cosine
order, that reaches `minScore` is served). Store: only
answers the policy allows (no errors, refusals, truncation, aborted streams, fallback-model
answers or answers of another tier than the chosen one), after the response was sent. Any
store failure is a bypass, never an error.
Response headers: `x-thrifty-cache: exact|semantic|miss|bypass`, `x-thrifty-similarity` (cosine)
and `x-thrifty-verifier-score` on a semantic hit. Cache keys never leave the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from thrifty_core.api.cachepolicy import CachePolicySpec
from thrifty_core.config import GatewayConfig
from thrifty_core.errors import ServiceUnavailableError
from thrifty_core.prices import Usage

from ..pipeline import Outcome, RequestContext, StageResponse
from ..sse import usage_object, usage_of
from ..tiering.decision import DECISION_KEY, TierDecision
from .eligibility import (
    Directives,
    answer_ineligible,
    answer_replayable,
    effective_threshold,
    parse_directives,
    request_ineligible,
)
from .entry import CachedAnswer
from .exact import ExactStore, Put, StoreUnavailable
from .guard import first_failure
from .keys import (
    SemanticKey,
    canonical_request,
    exact_key,
    route_keyspace,
    scope_of,
    semantic_key,
)
from .metrics import CacheMetrics
from .replay import replay_chunks
from .runtime import PolicyRuntime, SharedModels, open_policy
from .selector import Selector
from .semantic import Candidate

log = logging.getLogger(__name__)

HEADER = "x-thrifty-cache"
SIMILARITY = "x-thrifty-similarity"
VERIFIER = "x-thrifty-verifier-score"
STATE_KEY = "cache"
CANDIDATES = 5
QUEUE_PER_WORKER = 2  # semantic lookups waiting per embedding thread before new ones bypass
SEMANTIC_STORE_TIMEOUT = 1.0  # seconds for embedding + upsert of an answer
SEMANTIC_COOLDOWN = 2.0  # seconds the semantic layer is bypassed after it failed
FOLLOW_TIMEOUT = 30.0  # seconds a flight is followed at least (longer: the route's timeout)
MAX_FLIGHTS = 10_000  # identical-request groups tracked at once (beyond: no coalescing)


@dataclass(slots=True)
class Flight:
    """An identical request already upstream: its answer, once it is known to be cacheable
    (None: not cacheable, failed, or gone)."""

    answer: asyncio.Future[CachedAnswer | None]
    started: float
    wait: float = FOLLOW_TIMEOUT  # how long after `started` followers wait for the answer


@dataclass(slots=True)
class Lookup:
    """A semantic lookup's result: candidates that passed the checks, in cosine order, and
    the verifier's score of each (None when the policy runs no verifier). `step` is the part
    running, so a failure or timeout is counted against it."""

    step: str = "embed"
    vector: Any = None
    passed: list[Candidate] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    scores: list[float] | None = None
    same: list[bool] = field(default_factory=list)  # per passed candidate: the same question


@dataclass(slots=True)
class Plan:
    """What the before hook learned, for the after hook."""

    policy: PolicyRuntime
    key: str
    scope: str
    primary: str
    directives: Directives
    semantic: SemanticKey | None
    vector: Any = None
    tags: tuple[str, ...] = field(default_factory=tuple)
    degraded: bool = False  # a store failed or timed out: the lookup was a bypass
    # Set when identical requests that arrive meanwhile wait for this one's answer.
    flight: asyncio.Future[CachedAnswer | None] | None = None
    # The purge fence when the lookup ran (the policy's `fences` store's, shared by replicas on
    # Redis; the stage's own count without one); None when it could not be read.
    fence: str | None = None


def semantic_ttl(spec: CachePolicySpec) -> int:
    """How long a semantic entry may be reused: its layer's TTL, and never longer than the
    identical request may reuse it (once the exact entry expires, the same request must not
    find the answer in the semantic layer instead)."""
    ttl = spec.semantic.ttl_seconds
    return min(ttl, spec.exact.ttl_seconds) if spec.exact.enabled else ttl


def same_text(text: str) -> str:
    """A question's text up to leading and trailing whitespace: equal ones ask the same
    thing. Whitespace inside counts (indented code, "a  b" vs "a b")."""
    return text.strip()


def layout_differs(query: str, cached: str) -> bool:
    """Multi-line texts that differ only in whitespace: their layout is the difference
    (indented code, a table, a poem), which neither the embedding nor the verifier sees
    (they score `print(x)` inside and outside a loop 1.0 and 0.998)."""
    if "\n" not in query and "\n" not in cached:
        return False
    return query.split() == cached.split()


def shortlist(
    found: Lookup,
    asked: str,
    candidates: Iterable[Candidate],
    checks: Sequence[str],
    fresh: Callable[[Candidate], bool],
    judge: int | None,
) -> None:
    """Fill `found` with the candidates (cosine order) that may be served: fresh, the same
    layout, passing the checks. `judge`: how many of them the verifier may judge (None: no
    verifier); the search stops there, since only one of those may be served. The same
    question (the exact layer missed it: expired, evicted, Redis down) is not judged: it leaves
    nothing for the checks or the verifier, which scores some short texts against themselves
    below minScore ("hello": 0.71)."""
    question = same_text(asked)
    judged = 0
    for candidate in candidates:
        if judge is not None and judged >= judge:
            return
        if not fresh(candidate):
            continue
        identical = same_text(candidate.query) == question
        if not identical and layout_differs(asked, candidate.query):
            found.rejected.append("layout")
            continue
        failed = None if identical else first_failure(asked, candidate.query, checks)
        if failed is not None:
            found.rejected.append(failed)
            continue
        found.passed.append(candidate)
        found.same.append(identical)
        judged += not identical


class CacheStage:
    name = "cache"

    def __init__(
        self,
        config: GatewayConfig,
        policies: dict[str, PolicyRuntime],
        metrics: CacheMetrics,
    ) -> None:
        self._config = config
        self.policies = policies
        self._metrics = metrics
        # Embedding is CPU-bound: a bounded pool, and a bypass instead of a queue when busy.
        self._workers = max(1, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="thrifty-embed")
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._purges = 0  # purges started by this process: the fence of policies without Redis
        self._flights: dict[str, Flight] = {}  # exact key -> the request upstream for it
        self._late: set[asyncio.Future[None]] = set()  # checks of stores that landed late
        self._route_policy: dict[str, PolicyRuntime | None] = {}
        for route in config.routes:
            name = route.cache_policy or config.default_cache_policy
            policy = policies.get(name) if name else None
            if policy is not None and policy.exact is None and policy.semantic is None:
                policy = None  # both layers off: the route is not cached (nor coalesced)
            self._route_policy[route.name] = policy

    # -- lookup -----------------------------------------------------------------------------

    async def before_upstream(self, ctx: RequestContext) -> StageResponse | None:
        if ctx.endpoint != "chat":
            return None
        policy = self._route_policy.get(ctx.route.name)
        if policy is None:
            return None
        spec = policy.spec
        directives = parse_directives(ctx.headers)
        if request_ineligible(ctx.body, spec.eligibility) is not None:
            self._metrics.lookups.labels("all", "bypass").inc()
            ctx.response_headers[HEADER] = "bypass"
            return None
        decision: TierDecision | None = ctx.state.get(DECISION_KEY)
        primary = decision.target if decision is not None else ctx.targets[0].label
        scope = scope_of(ctx.tenant_name, spec.scope, self._config.ledger.gateway)
        keyspace = route_keyspace(policy.keyspace, ctx.route.name)
        try:
            canonical = canonical_request(ctx.body, primary)
            plan = Plan(
                policy=policy,
                key=exact_key(canonical, keyspace, scope),
                scope=scope,
                primary=primary,
                directives=directives,
                semantic=semantic_key(canonical, keyspace) if policy.semantic is not None else None,
                tags=directives.tags,
                fence=None if policy.fences is not None else str(self._purges),
            )
        except Exception as exc:  # a body the key cannot encode: answer it uncached
            log.warning("cache key not built, bypassing: %s", type(exc).__name__)
            self._metrics.errors.labels("all", "key").inc()
            self._metrics.lookups.labels("all", "bypass").inc()
            ctx.response_headers[HEADER] = "bypass"
            return None
        ctx.state[STATE_KEY] = plan
        if directives.no_cache:
            self._metrics.lookups.labels("all", "bypass").inc()
            ctx.response_headers[HEADER] = "bypass"
            if policy.fences is not None and not directives.no_store:
                plan.fence = await self._fence(policy.fences)
            return None
        answer = await self._exact(ctx, plan)
        if policy.exact is None and policy.fences is not None:
            plan.fence = await self._fence(policy.fences)  # (the exact lookup reads it)
        if answer is None and plan.semantic is not None and not self._in_flight(ctx, plan):
            # (An identical request already upstream: its answer, an exact one, comes sooner
            # than a semantic lookup would, and the flight may land while that lookup runs,
            # sending this request upstream a second time.)
            if await self._caught_up(policy, plan.fence):
                answer = await self._semantic(ctx, plan)
            else:
                plan.degraded = True
        if answer is None and not directives.no_store and plan.fence is not None:
            # (Without a fence, as while Redis fails, no answer could be shared.)
            answer = await self._follow(ctx, plan)
        if answer is None:
            ctx.response_headers[HEADER] = "bypass" if plan.degraded else "miss"
        return answer

    def _flight(self, plan: Plan, now: float) -> Flight | None:
        """The flight of an identical request upstream, while it may still be followed."""
        flight = self._flights.get(plan.key)
        return flight if flight is not None and now - flight.started < flight.wait else None

    def _in_flight(self, ctx: RequestContext, plan: Plan) -> bool:
        """An identical request is upstream now, and this one would wait for it (`_follow`)."""
        if plan.directives.no_store or plan.fence is None or ctx.body.get("stream"):
            return False
        flight = self._flight(plan, time.monotonic())
        return flight is not None and not flight.answer.done()

    async def _follow(self, ctx: RequestContext, plan: Plan) -> StageResponse | None:
        """Identical concurrent misses go upstream once: the first leads, the others wait for
        its answer (as long as the leader may take) and are served it as an exact hit; when it
        is not cacheable (an error, a truncated answer, a purge meanwhile) they go upstream
        themselves. A streamed request does not wait (it would get no token before the whole
        answer). The key holds the tenant scope: only requests that could share an entry
        share a flight."""
        now = time.monotonic()
        flight = self._flight(plan, now)
        if flight is not None:
            if ctx.body.get("stream"):
                # The leader's answer is handed over once it is whole: a streamed request
                # would get its first token only then. It asks upstream itself.
                self._metrics.lookups.labels("flight", "stream_not_coalesced").inc()
                return None
            try:
                entry = await asyncio.wait_for(
                    asyncio.shield(flight.answer), flight.wait - (now - flight.started)
                )
            except TimeoutError:
                entry = None
            ttl = plan.policy.spec.exact.ttl_seconds
            if entry is None or not self._fresh(entry, plan, ttl):
                self._metrics.lookups.labels("flight", "follow_failed").inc()
                return None
            self._metrics.lookups.labels("flight", "coalesced").inc()
            return self._respond(ctx, entry, "exact", {})
        if len(self._flights) >= MAX_FLIGHTS:
            self._flights = {
                k: f
                for k, f in self._flights.items()
                if not f.answer.done() and now - f.started < f.wait
            }
            if len(self._flights) >= MAX_FLIGHTS:
                return None
        future: asyncio.Future[CachedAnswer | None] = asyncio.get_running_loop().create_future()
        # Followers wait as long as the leader may take (its route's timeout and retry
        # budget): giving up earlier would send them upstream for the answer about to come.
        route = ctx.route
        wait = max(FOLLOW_TIMEOUT, route.timeout_seconds + route.retry_budget_seconds)
        self._flights[plan.key] = Flight(future, now, wait)
        plan.flight = future
        ctx.on_done.append(lambda: self._land(plan.key, future, None))
        return None

    def _land(
        self, key: str, future: asyncio.Future[CachedAnswer | None], entry: CachedAnswer | None
    ) -> None:
        """The leader's answer for its followers (the first call decides)."""
        if not future.done():
            future.set_result(entry)
        flight = self._flights.get(key)
        if flight is not None and flight.answer is future:
            del self._flights[key]

    async def _run(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the embedding pool. `_pending` counts it until a thread is done with it
        (a caller that timed out does not free the thread) or it is cancelled unstarted."""

        def counted() -> Any:
            try:
                return fn()
            finally:
                self._release()

        with self._pending_lock:
            self._pending += 1
        future = self._pool.submit(counted)
        try:
            return await asyncio.wrap_future(future)
        finally:
            if future.cancelled():  # never ran, so `counted` will not release it
                self._release()

    def _busy(self) -> bool:
        return self._pending >= self._workers * QUEUE_PER_WORKER

    def _release(self) -> None:
        with self._pending_lock:
            self._pending -= 1

    def _fresh(self, entry: CachedAnswer, plan: Plan, ttl: int) -> bool:
        """Servable to this request: young enough for the client's max-age and for the policy's
        TTL as it is now (an entry written under a longer TTL is not served past the current
        one), and carrying every purge tag the request carries. A tag says the answer depends
        on something (a document, a price list): a purge by that tag must remove every answer
        a request with it could be served, so an entry stored under other tags is not one.
        And one a hit can reproduce, streamed or not (an entry stored before that was checked
        may hold list content, which a streamed replay failed on)."""
        max_age = plan.directives.max_age
        age = entry.age()
        fresh = age <= ttl and (max_age is None or age <= max_age)
        return (
            fresh
            and (not plan.tags or set(plan.tags) <= set(entry.tags))
            and answer_replayable(entry.body)
        )

    async def _exact(self, ctx: RequestContext, plan: Plan) -> StageResponse | None:
        store = plan.policy.exact
        if store is None:
            return None
        try:
            entry, plan.fence = await store.lookup(plan.key)
        except StoreUnavailable:
            self._metrics.errors.labels("exact", "get").inc()
            self._metrics.lookups.labels("exact", "error").inc()
            plan.degraded = True
            return None
        except Exception:
            log.exception("exact cache lookup failed")
            self._metrics.errors.labels("exact", "get").inc()
            plan.degraded = True
            return None
        if entry is None or not self._fresh(entry, plan, plan.policy.spec.exact.ttl_seconds):
            self._metrics.lookups.labels("exact", "miss").inc()
            return None
        self._metrics.lookups.labels("exact", "hit").inc()
        return self._respond(ctx, entry, "exact", {})

    async def _caught_up(self, policy: PolicyRuntime, fence: str | None) -> bool:
        """Whether the policy's semantic index may be searched. An embedded index beside a
        Redis store is this process's own, while any replica may purge: first it applies the
        purges logged up to `fence` (the one the lookup read) that it has not, each as of the
        time it ran (entries stored here since stay). False (the semantic layer bypassed)
        when the fence is unknown (a purge may have run unseen), while another request
        applies purges (it does not wait), or when they cannot be read or applied now."""
        store, index = policy.purge_log, policy.semantic
        if store is None or index is None:
            return True
        if fence is None:
            return False
        if policy.applied == fence:
            return True
        if policy.catching_up.locked():
            return False
        async with policy.catching_up:
            applied = policy.applied
            if applied is None:  # (nothing is stored before the first fence is read)
                policy.applied = fence
                return True
            if applied == fence:
                return True
            try:
                # A fence that went back (a Redis that lost its data, or another one): which
                # purges ran is unknown, as with a log trimmed past this index: drop it all.
                gone = int(fence) < int(applied)
                purges = None if gone else await store.purges_since(applied, fence)
                if purges is None:
                    log.warning("purges this gateway's index missed are unknown: dropping it")
                    purges = [(Selector(), time.time())]
                now = time.time()
                for selector, at in purges:
                    older = (selector.older_than_seconds or 0.0) + max(0.0, now - at)
                    await asyncio.to_thread(
                        index.purge, replace(selector, older_than_seconds=older)
                    )
            except Exception as exc:
                log.warning("semantic index not caught up with purges: %s", type(exc).__name__)
                self._metrics.errors.labels("semantic", "purge").inc()
                return False
            policy.applied = fence
            return True

    async def _fence(self, store: ExactStore) -> str | None:
        try:
            return await store.fence()
        except Exception:  # unread: the answer is not stored (see `after_upstream`)
            self._metrics.errors.labels("exact", "get").inc()
            return None

    async def _semantic(self, ctx: RequestContext, plan: Plan) -> StageResponse | None:
        index, embedder, sem = plan.policy.semantic, plan.policy.embedder, plan.semantic
        if index is None or embedder is None or sem is None:
            return None
        layer = plan.policy.spec.semantic
        threshold = effective_threshold(layer.threshold, plan.directives.threshold)
        checks = layer.guard.checks if layer.guard.enabled else []
        verifier = plan.policy.verifier
        min_score = layer.guard.verifier.min_score

        found = Lookup()

        def lookup() -> None:
            found.vector = embedder.embed([sem.query])[0]
            found.step = "search"
            search = index.search(found.vector, plan.scope, sem.context, threshold, CANDIDATES)
            ttl = semantic_ttl(plan.policy.spec)
            judge = layer.guard.verifier.max_candidates if verifier is not None else None
            shortlist(
                found, sem.query, search, checks, lambda c: self._fresh(c.entry, plan, ttl), judge
            )
            same = found.same  # per passed candidate: the question asked, character for character
            if verifier is not None and found.passed:
                judged = [c.query for c, s in zip(found.passed, same, strict=True) if not s]
                if judged:
                    found.step = "verify"
                scores = iter(verifier.score(sem.query, judged) if judged else ())
                found.scores = [1.0 if s else float(next(scores)) for s in same]

        if time.monotonic() < plan.policy.semantic_down_until:
            self._metrics.lookups.labels("semantic", "cooldown").inc()
            plan.degraded = True
            return None
        if self._busy():
            # Every embedding thread is busy with a queue behind it: answering from upstream
            # now beats waiting for a lookup that would likely time out.
            self._metrics.lookups.labels("semantic", "busy").inc()
            plan.degraded = True
            return None
        try:
            await asyncio.wait_for(self._run(lookup), layer.lookup_timeout_ms / 1000)
        except Exception as exc:
            log.warning("semantic cache lookup bypassed: %s", type(exc).__name__)
            self._metrics.errors.labels("semantic", found.step).inc()
            self._metrics.lookups.labels("semantic", "error").inc()
            plan.policy.semantic_down_until = time.monotonic() + SEMANTIC_COOLDOWN
            plan.degraded = True
            return None
        plan.vector = found.vector
        for check in found.rejected:
            self._metrics.guard_rejections.labels(check).inc()
        for i, candidate in enumerate(found.passed):  # cosine order
            headers = {SIMILARITY: f"{candidate.score:.4f}"}
            if found.scores is not None:
                if not found.scores[i] >= min_score:  # NaN never passes
                    self._metrics.guard_rejections.labels("verifier").inc()
                    continue
                if not found.same[i]:  # (the same question is not scored)
                    headers[VERIFIER] = f"{found.scores[i]:.4f}"
            self._metrics.lookups.labels("semantic", "hit").inc()
            return self._respond(ctx, candidate.entry, "semantic", headers)
        self._metrics.lookups.labels("semantic", "miss").inc()
        return None

    def _respond(
        self, ctx: RequestContext, entry: CachedAnswer, layer: str, headers: dict[str, str]
    ) -> StageResponse:
        body = {**entry.body, "id": f"chatcmpl-{os.urandom(12).hex()}", "created": int(time.time())}
        usage = entry.worth()
        saved = 0.0
        if usage is not None:
            # The cache saved the upstream price of the answer it served. An answer a cheaper
            # tier gave is worth that tier's price; the rest up to the route's baseline model
            # is what tiering saved (as it did on the original request).
            baseline = ctx.baseline_cost(usage)
            tier = ctx.state.get(DECISION_KEY)  # the key's target: the answer's provider
            where = tier.provider if tier is not None else ctx.targets[0].provider
            known = ctx.catalog.lookup(entry.model, where) is not None
            saved = ctx.catalog.cost(entry.model, usage, provider=where) if known else baseline
            if baseline > saved:
                ctx.add_saving("tier", baseline - saved)
        return StageResponse(
            lever="cache",
            body=body,
            chunks=replay_chunks(body, ctx.include_usage) if ctx.stream else None,
            usage=usage or Usage(),
            model=entry.model,
            served_by=f"cache:{layer}",
            cost_usd=0.0,
            saved_usd=saved,
            # the entry's age in seconds (RFC 9111), for clients that send max-age
            headers={HEADER: layer, "age": str(max(0, int(entry.age()))), **headers},
        )

    # -- store ------------------------------------------------------------------------------

    async def after_upstream(self, ctx: RequestContext, outcome: Outcome) -> None:
        plan: Plan | None = ctx.state.get(STATE_KEY)
        entry = await self._store(ctx, outcome, plan)
        if plan is not None and plan.flight is not None:  # its own flight, not a later one's
            self._land(plan.key, plan.flight, entry)

    async def _store(
        self, ctx: RequestContext, outcome: Outcome, plan: Plan | None
    ) -> CachedAnswer | None:
        """Store the answer when it may be; return it when identical requests may be served
        it (it is cacheable and no purge started since the lookup)."""
        decision: TierDecision | None = ctx.state.get(DECISION_KEY)
        if plan is None or (outcome.from_stage and not (decision and decision.answered)):
            return None  # no lookup, or a cache, student or deferral answer (the cascade's is)
        if plan.directives.no_store:
            self._metrics.stores.labels("no_store").inc()
            return None
        why_not = decision.cacheable() if decision is not None else None
        if why_not is not None:
            self._metrics.stores.labels(why_not).inc()
            return None
        if outcome.served_by != plan.primary:
            self._metrics.stores.labels("fallback").inc()
            return None
        if plan.fence is None:
            # The fence could not be read at lookup (its store failed): a purge may run unseen.
            self._metrics.stores.labels("unfenced").inc()
            return None
        if plan.policy.exact is None and await self._fenced(plan):
            self._metrics.stores.labels("purged").inc()
            return None
        why = answer_ineligible(outcome.status, outcome.body, plan.policy.spec.eligibility)
        if why is not None or outcome.body is None:
            self._metrics.stores.labels(why or "error").inc()
            return None
        cost = outcome.usage
        entry = CachedAnswer(
            body=outcome.body,
            tenant=ctx.tenant_name,
            route=ctx.route.name,
            model=outcome.model,
            tags=plan.tags,
            gateway=self._config.ledger.gateway,
            usage=(
                usage_object(cost) if usage_of(outcome.body) is None and cost.total_tokens else None
            ),
        )
        spec = plan.policy.spec
        exact = plan.policy.exact
        put: Put | None = None
        if exact is not None:
            # A purge that started while the request was upstream (on any replica sharing the
            # store) fences the answer out: it may be what the purge meant to remove.
            try:
                put = await exact.put(plan.key, entry, spec.exact.ttl_seconds, plan.fence)
            except StoreUnavailable:
                self._metrics.errors.labels("exact", "put").inc()
            if put == "purged":
                self._metrics.stores.labels("purged").inc()
                return None
            if put == "stored":
                self._metrics.stores.labels("exact").inc()
        kept = await self._store_semantic(plan, entry)
        if not kept or (put != "stored" and await self._fenced(plan)):
            return None  # only the exact write checks the fence atomically
        return entry

    async def _take_back_if_fenced(self, plan: Plan) -> bool:
        """After the request's semantic point landed: a purge that started before it either
        deleted it or advanced the fence before this read (it advances the fence first), so
        when the fence moved, take the point back out. True when it did."""
        index = plan.policy.semantic
        if index is None or not await self._fenced(plan):
            return False
        try:
            await asyncio.to_thread(index.remove, plan.key)
        except Exception as exc:
            log.warning("semantic cache store not taken back: %s", type(exc).__name__)
            self._metrics.errors.labels("semantic", "put").inc()
        self._metrics.stores.labels("purged").inc()
        return True

    async def _when_landed(self, adding: asyncio.Future[Any], plan: Plan) -> None:
        """A semantic store that timed out may still land: check the fence when it does."""
        try:
            await adding
        except Exception:
            return  # it did not land
        await self._take_back_if_fenced(plan)

    async def _fenced(self, plan: Plan) -> bool:
        """Has a purge started since the lookup (or is that unknown)?"""
        fences = plan.policy.fences
        now = await self._fence(fences) if fences is not None else str(self._purges)
        return now != plan.fence

    async def _store_semantic(self, plan: Plan, entry: CachedAnswer) -> bool:
        """Store the answer in the semantic layer (best effort); False when a purge started
        since the lookup (the point, if stored, is taken back out)."""
        index, embedder, sem = plan.policy.semantic, plan.policy.embedder, plan.semantic
        if index is None or embedder is None or sem is None:
            return True
        ttl = semantic_ttl(plan.policy.spec)
        vector = plan.vector

        def add() -> None:
            v = vector if vector is not None else embedder.embed([sem.query])[0]
            index.add(plan.key, v.tolist(), plan.scope, sem.context, sem.query, entry, ttl)

        # Best effort, and bounded: the ledger waits for the after-hooks, so a slow or hung
        # Qdrant must neither queue stores behind each other nor hold every request's
        # accounting for its timeout.
        if time.monotonic() < plan.policy.semantic_down_until:
            self._metrics.stores.labels("semantic_unavailable").inc()
            return True
        if self._busy():
            self._metrics.stores.labels("semantic_busy").inc()
            return True
        adding = asyncio.ensure_future(self._run(add))
        try:
            await asyncio.wait_for(asyncio.shield(adding), SEMANTIC_STORE_TIMEOUT)
        except Exception as exc:
            log.warning("semantic cache store failed: %s", type(exc).__name__)
            self._metrics.errors.labels("semantic", "put").inc()
            plan.policy.semantic_down_until = time.monotonic() + SEMANTIC_COOLDOWN
            if not adding.done():  # a thread cannot be stopped: its point may still land
                late = asyncio.ensure_future(self._when_landed(adding, plan))
                self._late.add(late)
                late.add_done_callback(self._late.discard)
            return True
        if await self._take_back_if_fenced(plan):
            return False
        self._metrics.stores.labels("semantic").inc()
        return True

    # -- admin ------------------------------------------------------------------------------

    async def purge(self, selector: Selector, policy: str | None = None) -> dict[str, int]:
        """Remove matching entries from every (or one) policy's stores. Every store is tried
        even when one fails; then `ServiceUnavailableError` names those that failed (a purge is
        idempotent: the caller retries it). Only this gateway's entries (and those labelled
        with no gateway) are selected: gateways sharing a policy's stores keep theirs."""
        if self._config.ledger.gateway:
            selector = replace(selector, gateway=self._config.ledger.gateway)
        self._purges += 1
        counts = {"exact": 0, "semantic": 0}
        failed: list[str] = []
        for name, runtime in self.policies.items():
            if policy is not None and name != policy:
                continue
            if runtime.exact is not None:
                try:
                    counts["exact"] += await runtime.exact.purge(selector)
                except Exception:
                    failed.append(f"{name} (exact)")
            if runtime.exact is None and runtime.fences is not None:
                try:  # the fence only: stores started before it are then refused everywhere
                    await runtime.fences.purge(selector)
                except Exception:
                    failed.append(f"{name} (fence)")
            if runtime.semantic is not None:
                try:
                    counts["semantic"] += await asyncio.to_thread(runtime.semantic.purge, selector)
                except Exception as exc:
                    log.warning("semantic purge failed: %s", type(exc).__name__)
                    failed.append(f"{name} (semantic)")
        if failed:
            self._metrics.errors.labels("all", "purge").inc()
            raise ServiceUnavailableError(
                f"The purge did not reach every store: {', '.join(failed)} failed after "
                f"{counts['exact']} exact and {counts['semantic']} semantic entries were "
                "removed. Retry the purge.",
                code="purge_incomplete",
            )
        return counts

    async def aclose(self) -> None:
        if self._late:
            await asyncio.gather(*self._late, return_exceptions=True)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for runtime in self.policies.values():
            await runtime.aclose()


async def cache_stage(config: GatewayConfig, resources: Any) -> CacheStage | None:
    """Stage factory: a `CacheStage` when the config declares cache policies."""
    if not config.cache_policies:
        return None
    models = SharedModels()
    policies = {
        name: await open_policy(name, policy, models)
        for name, policy in config.cache_policies.items()
    }
    return CacheStage(config, policies, CacheMetrics(resources.metrics.registry))
