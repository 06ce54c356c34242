"""The request pipeline: the contract caching, student routing, deferral and tiering plug into.

One proxied request (`POST /v1/chat/completions`, `POST /v1/embeddings`) flows like this:

    413 check -> auth (tenant) -> route -> rate limit -> RequestContext
      -> for stage in stages: stage.before_upstream(ctx)   # first non-None StageResponse wins
      -> upstream (retries, fallbacks, circuit breakers) unless a stage answered
      -> response to the client (streams are forwarded chunk by chunk)
      -> for stage in stages: stage.after_upstream(ctx, outcome)   # after the response is sent
      -> ledger.record(ctx, outcome)

Writing a stage (a class satisfying `Stage`; the gateway's `create_app` takes a list of stage
factories, each `(GatewayConfig, AppResources) -> Stage | None`):

* `before_upstream(ctx)` may return a `StageResponse` to answer without the provider:
  a cache hit (`lever="cache"`), a confident student (`lever="distill"`), a deferred 202
  (`lever="batch"`). Set `saved_usd` to what the provider call would have cost (use
  `ctx.baseline_cost(usage)`) and `cost_usd` to what serving it cost (embedding, GPU time).
  For `stream=True` requests set `chunks` (SSE `data:` payload objects, replayed for you)
  or leave `body` and let the gateway replay it as a stream.
  It may also change the request instead: replace `ctx.targets` (tiering to a cheaper model,
  recording `ctx.add_saving("tier", usd)` when the answer comes back), or edit `ctx.body`
  (the gateway serialises `ctx.body` for the upstream call). To ask the provider for
  something the client did not ask for (capture's `logprobs`), put the fields in
  `ctx.upstream_extra` (sent upstream only: `ctx.body`, and so cache keys, stay the client's)
  and name the choice fields they add in `ctx.hidden_choice_fields`: the gateway nulls them
  in what the client and the after hooks' `outcome.body` get; `outcome.upstream_body` keeps
  the provider's answer as it came.
* `after_upstream(ctx, outcome)` sees the final answer, streams already assembled into one
  `chat.completion` object (`outcome.body`), with usage and costs. It runs after the response
  was sent (never on the latency path); use it to fill caches or capture teacher pairs. It
  must not raise (log and return); it must not log prompt or completion text.
* `ctx.state` is a free dict for a stage to pass data from its before hook to its after hook
  (key it by the stage's name).

Stages run in list order: put cheaper ones (exact cache) before dearer ones (semantic cache,
student). The gateway never imports a stage module at import time of the app; stages are
given to `create_app`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from thrifty_core.config import RouteConfig, TenantConfig
from thrifty_core.errors import InvalidRequestError
from thrifty_core.prices import PriceCatalog, Usage

Endpoint = Literal["chat", "embeddings"]
Lever = Literal["cache", "batch", "distill", "tier"]


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream choice: provider name and the model name at that provider."""

    provider: str
    model: str

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model}"


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """A list-valued header as one value: sent on several lines, its values joined with ','
    (RFC 9110, 5.3), as `Cache-Control: max-age=600` and `Cache-Control: no-store` mean
    `max-age=600, no-store` (a plain lookup returns the first line only)."""
    getlist = getattr(headers, "getlist", None)
    if getlist is None:
        return headers.get(name)
    values: list[str] = getlist(name)
    return ",".join(values) if values else None


def directive_tokens(headers: Mapping[str, str]) -> list[str]:
    """The client's cache directives, lower-cased: `Cache-Control` and `x-thrifty-cache`, and
    `Pragma: no-cache` when there is no `Cache-Control` (RFC 9111, 5.4)."""
    tokens: list[str] = []
    for name in ("cache-control", "x-thrifty-cache"):
        value = header_value(headers, name)
        if value:
            # `;` too: a stray one ("no-store;") must not hide a directive
            tokens.extend(t.strip().lower() for t in re.split("[,;]", value))
    pragma = header_value(headers, "pragma")
    if pragma and headers.get("cache-control") is None:
        if "no-cache" in (t.strip().lower() for t in pragma.split(",")):
            tokens.append("no-cache")
    return tokens


DEFER_HEADER = "x-thrifty-defer"
_YES, _NO = frozenset({"1", "true", "yes"}), frozenset({"", "0", "false", "no"})


def wants_defer(headers: Mapping[str, str]) -> bool:
    """`x-thrifty-defer`: yes or no; anything else is the client's 400 (a typo would
    otherwise send deferrable work upstream at full price without a word). Read before any
    stage runs, so that a bad value is refused whatever would have answered."""
    token = (header_value(headers, DEFER_HEADER) or "").strip().lower()
    if token in _YES:
        return True
    if token in _NO:
        return False
    raise InvalidRequestError(
        f"{DEFER_HEADER} must be one of: true, false, 1, 0, yes, no.",
        param=DEFER_HEADER,
        code="invalid_defer_header",
    )


@dataclass(frozen=True, slots=True)
class CacheControl:
    """Client cache directives (`Cache-Control` or `x-thrifty-cache`: no-cache, no-store,
    only-if-cached; see `directive_tokens`)."""

    no_cache: bool = False  # do not serve from cache (still store)
    no_store: bool = False  # do not store this answer
    only_if_cached: bool = False  # answer 504 instead of calling the provider on a miss

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> CacheControl:
        tokens = set(directive_tokens(headers))
        if not tokens:
            return NO_DIRECTIVES
        return cls(
            no_cache="no-cache" in tokens,
            no_store="no-store" in tokens,
            only_if_cached="only-if-cached" in tokens,
        )


NO_DIRECTIVES = CacheControl()


@dataclass(slots=True)
class RequestContext:
    """Everything the stages know about one request. Mutable by stages, per request."""

    request_id: str
    endpoint: Endpoint
    route: RouteConfig
    tenant: TenantConfig | None
    body: dict[str, Any]
    headers: Mapping[str, str]
    targets: list[Target]
    catalog: PriceCatalog
    stream: bool = False
    include_usage: bool = False
    cache_control: CacheControl = NO_DIRECTIVES
    defer: bool = False  # the client asked for a deferred answer (`x-thrifty-defer`)
    # Paid for work whose answer was not served (a student's inference before the teacher
    # answered; cascade tiers, when the request then failed): added to the request's cost,
    # booked and charged, whatever answered (the lever that spent it books it as a loss).
    spent_usd: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    savings: dict[str, float] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)
    upstream_extra: dict[str, Any] = field(default_factory=dict)
    hidden_choice_fields: set[str] = field(default_factory=set)
    # Run once when the request is over, however it ended (answered, failed, cancelled).
    on_done: list[Callable[[], None]] = field(default_factory=list)

    def done(self) -> None:
        callbacks, self.on_done = self.on_done, []
        for callback in callbacks:
            callback()

    @property
    def tenant_name(self) -> str:
        return self.tenant.name if self.tenant else "anonymous"

    @property
    def model(self) -> str:
        """The public model (route) name the client asked for."""
        return self.route.name

    def baseline_model(self) -> str:
        """The model a direct call would have used: the route's first target."""
        return self.route.targets[0].model

    def baseline_cost(self, usage: Usage) -> float:
        """What `usage` costs at the baseline model's list price (no Thrifty)."""
        primary = self.route.targets[0]
        return self.catalog.cost(primary.model, usage, provider=primary.provider)

    def add_saving(self, lever: Lever, usd: float) -> None:
        """Record money a lever saved on this request (positive USD)."""
        self.savings[lever] = self.savings.get(lever, 0.0) + usd

    def spend(self, lever: Lever, usd: float) -> None:
        """Record money a lever paid for work whose answer was not served: added to the
        request's cost (`spent_usd`) and booked as that lever's loss."""
        self.spent_usd += usd
        self.add_saving(lever, -usd)


@dataclass(slots=True)
class StageResponse:
    """An answer produced by a stage instead of the provider."""

    lever: Lever | None
    body: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] | None = None
    status: int = 200
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    served_by: str = ""  # what answered, for x-thrifty-upstream ("cache:exact", "student:x")
    cost_usd: float = 0.0
    saved_usd: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    # Booked in the ledger later, when the work it accepted is done (a deferred request: its
    # batch line), not now as a request of its own.
    booked_later: bool = False


@dataclass(slots=True)
class Outcome:
    """The final answer of a request, as after-hooks and the ledger see it."""

    status: int
    body: dict[str, Any] | None
    usage: Usage
    model: str  # model that produced the answer
    served_by: str  # "<provider>/<model>" or a stage's served_by
    cost_usd: float  # what this request actually cost
    from_stage: bool = False
    lever: str | None = None
    error_type: str | None = None
    batch: bool = False
    upstream_body: dict[str, Any] | None = None  # before hidden_choice_fields were nulled
    booked_later: bool = False  # see `StageResponse.booked_later`


class Stage(Protocol):
    """A pipeline stage (see the module docstring)."""

    name: str

    async def before_upstream(self, ctx: RequestContext) -> StageResponse | None: ...

    async def after_upstream(self, ctx: RequestContext, outcome: Outcome) -> None: ...


class StageFactory(Protocol):
    """Builds a stage at app start-up from the config and the app's resources (its
    `GatewayState`: config, price catalog, upstream client, ...); None when not configured.
    A stage with an `async def aclose()` method is closed at shutdown."""

    async def __call__(self, config: Any, resources: Any, /) -> Stage | None: ...
