"""The cache stage in the gateway, driven by the official openai client against the provider
simulator: tenant isolation, answer-changing fields, paraphrases and the guard, eligibility,
client directives, streamed hits, purge and the ledger."""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from fastapi.testclient import TestClient
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.procs import Simulator, local_config, start_simulator
from tests.integration.waiting import metric_total, wait_recorded, wait_until
from thrifty_core.api.cachepolicy import GUARD_CHECKS, PairVerifier
from thrifty_core.config import parse_config
from thrifty_gateway.app import create_app
from thrifty_gateway.services.cache.guard import first_failure

pytestmark = pytest.mark.integration

POLICY: dict[str, Any] = {
    "spec": {
        "semantic": {"enabled": True, "threshold": 0.85, "embedding": {}},
        "eligibility": {"maxTemperature": 1.0},
    },
}
EXTRA_ROUTES = [
    {"name": "broken", "targets": [{"provider": "simulator", "model": "broken-model"}]},
    {"name": "mini-alias", "targets": [{"provider": "simulator", "model": "gpt-4o-mini"}]},
    {
        "name": "falls-back",
        "maxRetries": 0,
        "targets": [
            {"provider": "simulator", "model": "broken-model"},
            {"provider": "simulator", "model": "gpt-4o-mini"},
        ],
    },
]


def cache_config(simulator_url: str, policy: dict[str, Any] | None = None) -> dict[str, Any]:
    base = local_config(simulator_url)
    return {
        **base,
        "routes": [*base["routes"], *EXTRA_ROUTES],
        "cachePolicies": {"default": policy or POLICY},
        "defaultCachePolicy": "default",
    }


class Harness:
    def __init__(self, http: TestClient, simulator: Simulator) -> None:
        self.http = http
        self.simulator = simulator
        self.sent = 0  # chat requests sent to the app, counted as they leave the client
        http.event_hooks["request"].append(self._count)
        self.a = self.client("sk-local-a")
        self.b = self.client("sk-local-b")

    def _count(self, request: httpx2.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            self.sent += 1

    def settle(self) -> None:
        """Entries are stored after the response is sent (streamed answers in a task of their
        own): wait until the ledger, written after the stores' after-hooks, holds every chat
        request sent so far."""
        wait_recorded(self.http, self.sent)

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url="http://testserver/v1", api_key=key, http_client=self.http, max_retries=0
        )

    def ask(
        self,
        text: str,
        client: openai.OpenAI | None = None,
        headers: dict[str, str] | None = None,
        model: str = "gpt-4o-mini",
        system: str | None = None,
        **kwargs: Any,
    ) -> Any:
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": text}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        return (client or self.a).chat.completions.with_raw_response.create(
            model=model, messages=messages, extra_headers=headers, **kwargs
        )

    def upstream_calls(self, model: str = "gpt-4o-mini") -> int:
        return int(self.simulator.stats()["requests"].get(model, 0))


def cache_of(resp: Any) -> str:
    value: str = resp.headers["x-thrifty-cache"]
    return value


@pytest.fixture(scope="module")
def h(simulator: Simulator) -> Iterator[Harness]:
    app = create_app(parse_config(cache_config(simulator.url)))
    with TestClient(app) as http:
        harness = Harness(http, simulator)
        yield harness
        harness.a.close()
        harness.b.close()


def unique(text: str) -> str:
    return f"{text} [{uuid.uuid4().hex[:8]}]"


def test_exact_hit_serves_the_same_answer_without_the_provider(h: Harness) -> None:
    q = unique("What is the fee for a wire transfer?")
    first = h.ask(q)
    assert cache_of(first) == "miss"
    h.settle()
    calls = h.upstream_calls()
    second = h.ask(q)
    assert cache_of(second) == "exact"
    assert second.headers["x-thrifty-upstream"] == "cache:exact"
    assert "x-thrifty-similarity" not in second.headers
    assert h.upstream_calls() == calls
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert not any("key" in name and "cache" in name for name in second.headers)


def test_identical_requests_from_two_tenants_never_share_an_entry(h: Harness) -> None:
    q = unique("How do I close my account?")
    assert cache_of(h.ask(q, h.a)) == "miss"
    h.settle()
    assert cache_of(h.ask(q, h.b)) == "miss"
    h.settle()
    assert cache_of(h.ask(q, h.b)) == "exact"
    assert cache_of(h.ask(q, h.a)) == "exact"
    paraphrase_other_tenant = h.ask(q.replace("How do I", "How can I"), h.b)
    assert cache_of(paraphrase_other_tenant) in ("miss", "semantic")
    # b's own entry may answer b's paraphrase, never a's: purge b and retry.
    purge(h, {"tenant": "team-b"})
    assert cache_of(h.ask(q.replace("How do I", "How can I"), h.b)) == "miss"


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.3},
        {"top_p": 0.5},
        {"seed": 11},
        {"max_tokens": 300},
        {"stop": ["\n\n"]},
        {"presence_penalty": 0.1},
        {"response_format": {"type": "json_object"}},
        {"logit_bias": {"50256": -100}},
        {"logprobs": True},
        {"model": "gpt-4o"},
        {"messages_system": "Answer in French."},
    ],
)
def test_each_answer_changing_field_changed_alone_misses(
    h: Harness, change: dict[str, Any]
) -> None:
    q = unique("Which documents do I need to open an account?")
    base: dict[str, Any] = {"temperature": 0.2, "seed": 1, "max_tokens": 200}
    assert cache_of(h.ask(q, **base)) == "miss"
    h.settle()
    assert cache_of(h.ask(q, **base)) == "exact"
    args = {**base, **change}
    if "messages_system" in args:
        system = args.pop("messages_system")
        resp = h.a.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": q}],
            **args,
        )
    else:
        resp = h.ask(q, **args)
    assert cache_of(resp) == "miss"


def test_a_paraphrase_within_a_tenant_hits_the_semantic_layer(h: Harness) -> None:
    # A system prompt of this test's own keeps its entries apart from other tests' (the system
    # prompt is part of the exact context filter); the user turns are the paraphrases alone.
    system = f"You are the support assistant of branch {uuid.uuid4().hex[:6]}."
    first = h.ask("How do I reset my online banking password?", system=system)
    assert cache_of(first) == "miss"
    h.settle()
    hit = h.ask("How can I reset my online banking password?", system=system)
    assert cache_of(hit) == "semantic"
    assert 0.85 <= float(hit.headers["x-thrifty-similarity"]) < 1.0
    assert float(hit.headers["x-thrifty-verifier-score"]) >= PairVerifier().min_score
    assert hit.parse().choices[0].message.content == first.parse().choices[0].message.content
    other_tenant = h.ask("How can I reset my online banking password?", h.b, system=system)
    assert cache_of(other_tenant) == "miss"
    # Clients may tighten the threshold, never loosen it.
    strict = h.ask(
        "How could I reset my online banking password?",
        headers={"x-thrifty-cache-threshold": "0.999"},
        system=system,
    )
    assert cache_of(strict) == "miss"


@pytest.mark.parametrize(
    ("cached", "asked"),
    [
        ("How do I start the payment server?", "How do I stop the payment server?"),
        ("What was the bank's revenue in 2014?", "What was the bank's revenue in 2018?"),
        ("Can I transfer money to Germany?", "Can I transfer money to France?"),
        ("Is the savings account taxable?", "Is the savings account not taxable?"),
        ("How do I convert USD to EUR?", "How do I convert EUR to USD?"),
        # as phones type them, and opposites by prefix or inflection (each was served, the
        # verifier scoring it 0.996 to 0.999, until the checks read them)
        ("I want onions on my pizza", "I don\u2019t want onions on my pizza"),
        ("Is it safe to eat raw chicken?", "Is it unsafe to eat raw chicken?"),
        ("Is the restaurant open on Sundays?", "Is the restaurant closed on Sundays?"),
    ],
)
def test_the_guard_refuses_near_misses(h: Harness, cached: str, asked: str) -> None:
    tag = uuid.uuid4().hex[:6]
    assert cache_of(h.ask(f"{cached} {tag}")) == "miss"
    h.settle()
    assert cache_of(h.ask(f"{asked} {tag}")) == "miss"


# Same intent word for word except the audience or object: the checks have nothing to catch
# (no number, negation, antonym or entity differs) and the cosine clears the floor; only the
# pair verifier can tell them apart.
TOPICAL_NEIGHBOURS = [
    (
        "What is the best programming language for beginners?",
        "What is the best programming language for kids?",
    ),
    ("How do I make pizza dough at home?", "How do I make bread dough at home?"),
]


def _ask_pair(simulator: Simulator, verifier: bool, cached: str, asked: str) -> tuple[Any, float]:
    """Cache `cached`, then ask `asked` under a recall-leaning policy (cosine floor 0.75) with
    the verifier on or off; returns the second response and the verifier's rejections."""
    policy = copy.deepcopy(POLICY)
    policy["spec"]["semantic"]["threshold"] = 0.75
    policy["spec"]["semantic"]["guard"] = {"verifier": {"enabled": verifier}}
    with TestClient(create_app(parse_config(cache_config(simulator.url, policy)))) as http:
        h = Harness(http, simulator)
        assert cache_of(h.ask(cached)) == "miss"
        h.settle()
        resp = h.ask(asked)
        rejected = metric_total(http, "thrifty_cache_guard_rejections_total", check="verifier")
        h.a.close()
        h.b.close()
    return resp, rejected


@pytest.mark.parametrize(("cached", "asked"), TOPICAL_NEIGHBOURS)
def test_the_verifier_refuses_topical_neighbours_the_checks_let_through(
    simulator: Simulator, cached: str, asked: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    cached, asked = f"{cached} ref {tag}", f"{asked} ref {tag}"
    assert first_failure(asked, cached, list(GUARD_CHECKS)) is None
    # Without the verifier the cosine search and the checks serve the neighbour's answer ...
    served, _ = _ask_pair(simulator, False, cached, asked)
    assert cache_of(served) == "semantic"
    assert "x-thrifty-verifier-score" not in served.headers
    # ... with it, the same lookup is refused by the verifier.
    refused, rejections = _ask_pair(simulator, True, cached, asked)
    assert cache_of(refused) == "miss"
    assert rejections >= 1


def test_the_same_question_is_served_by_the_semantic_layer_when_the_exact_one_misses(
    simulator: Simulator,
) -> None:
    """Exact layer off (as when Redis is down or the entry was evicted): asked again word for
    word (up to whitespace), the question is served from the semantic layer at the default
    verifier, which scores some short texts against themselves below minScore."""
    policy = copy.deepcopy(POLICY)
    policy["spec"]["exact"] = {"enabled": False}
    policy["spec"]["semantic"]["threshold"] = 0.90
    with TestClient(create_app(parse_config(cache_config(simulator.url, policy)))) as http:
        h = Harness(http, simulator)
        for text in ("hello", "Write a haiku about autumn leaves."):
            system = f"Reply as assistant {uuid.uuid4().hex[:8]}."  # a fresh context per text
            assert cache_of(h.ask(text, system=system)) == "miss"
            h.settle()
            again = h.ask(f"  {text} ", system=system)
            assert cache_of(again) == "semantic"
            assert again.headers["x-thrifty-similarity"] == "1.0000"
            # the verifier did not judge it: no score is claimed
            assert "x-thrifty-verifier-score" not in again.headers
        # Whitespace inside is not "the same question": indentation changes what code does.
        system = f"Reply as assistant {uuid.uuid4().hex[:8]}."
        inside = "What does this print?\nfor i in range(3):\n    x = i\n    print(x)"
        outside = "What does this print?\nfor i in range(3):\n    x = i\nprint(x)"
        assert cache_of(h.ask(inside, system=system)) == "miss"
        h.settle()
        assert cache_of(h.ask(outside, system=system)) == "miss"  # (the verifier says 0.998)
        h.a.close()
        h.b.close()


def test_an_answer_is_not_reused_past_the_exact_ttl_by_the_semantic_layer(
    simulator: Simulator,
) -> None:
    policy = copy.deepcopy(POLICY)
    policy["spec"]["exact"] = {"enabled": True, "ttlSeconds": 1}
    with TestClient(create_app(parse_config(cache_config(simulator.url, policy)))) as http:
        h = Harness(http, simulator)
        q = unique("How do I reset my online banking password?")
        assert cache_of(h.ask(q)) == "miss"
        h.settle()
        assert cache_of(h.ask(q)) == "exact"
        time.sleep(1.2)  # both entries have expired (the semantic one with the exact TTL)
        assert cache_of(h.ask(q)) == "miss"
        h.a.close()
        h.b.close()


def test_truncated_answers_are_never_stored(h: Harness) -> None:
    q = unique("Explain in detail how mortgage interest is computed")
    first = h.ask(q, max_tokens=2)
    assert first.parse().choices[0].finish_reason == "length"
    h.settle()
    assert cache_of(h.ask(q, max_tokens=2)) == "miss"


def test_errors_and_fallback_answers_are_never_stored(h: Harness) -> None:
    q = unique("What is my balance?")
    for _ in range(2):
        with pytest.raises(openai.APIStatusError):
            h.ask(q, model="broken")
        h.settle()
    for _ in range(2):
        resp = h.ask(q, model="falls-back")
        assert resp.headers["x-thrifty-upstream"] == "simulator/gpt-4o-mini"
        assert cache_of(resp) == "miss"
        h.settle()


def test_ineligible_requests_bypass(h: Harness) -> None:
    q = unique("Tell me a story")
    hot = h.ask(q, temperature=1.8)
    assert cache_of(hot) == "bypass"
    many = h.ask(q, n=2)
    assert cache_of(many) == "bypass"


def test_no_store_no_cache_and_max_age(h: Harness) -> None:
    q = unique("What are the branch opening hours?")
    assert cache_of(h.ask(q, headers={"cache-control": "no-store"})) == "miss"
    h.settle()
    assert cache_of(h.ask(q)) == "miss"  # nothing was stored
    h.settle()
    assert cache_of(h.ask(q)) == "exact"
    assert cache_of(h.ask(q, headers={"cache-control": "no-cache"})) == "bypass"
    h.settle()  # the no-cache answer is stored again: its age counts from that store
    time.sleep(1.5)  # wait out max-age=1 (a real clock: entries carry their creation time)
    aged = h.ask(q, headers={"cache-control": "max-age=600"})
    assert cache_of(aged) == "exact" and int(aged.headers["age"]) >= 1  # (RFC 9111's Age)
    assert cache_of(h.ask(q, headers={"cache-control": "max-age=1"})) == "miss"
    assert cache_of(h.ask(q, headers={"cache-control": "max-age=600"})) == "exact"


def test_only_if_cached_and_pragma_no_cache(h: Harness) -> None:
    """The standard headers work as x-thrifty-cache does: `Cache-Control: only-if-cached` on a
    miss is a 504 without calling the provider; `Pragma: no-cache` skips the lookup."""
    q = unique("Can I order a replacement card abroad?")
    calls = h.upstream_calls()
    with pytest.raises(openai.APIStatusError) as info:
        h.ask(q, headers={"cache-control": "only-if-cached"})
    assert info.value.status_code == 504
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "cache_miss"
    assert info.value.response.headers["x-should-retry"] == "false"  # (the SDK retried a 504)
    assert h.upstream_calls() == calls
    assert cache_of(h.ask(q)) == "miss"
    h.settle()
    assert cache_of(h.ask(q, headers={"cache-control": "only-if-cached"})) == "exact"
    assert cache_of(h.ask(q, headers={"pragma": "no-cache"})) == "bypass"
    assert h.upstream_calls() == calls + 2


def test_streamed_answers_are_stored_and_replayed_as_sse(h: Harness) -> None:
    q = unique("Summarise the overdraft policy")
    messages: Any = [{"role": "user", "content": q}]
    first = list(h.a.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in first if c.choices)
    h.settle()
    raw = h.a.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert cache_of(raw) == "exact"
    chunks = list(raw.parse())
    replayed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert replayed == text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    plain = h.ask(q)
    assert cache_of(plain) == "exact"
    assert plain.parse().choices[0].message.content == text


def purge(h: Harness, body: dict[str, Any], key: str = "sk-local-admin") -> Any:
    return h.http.post(
        "/v1/thrifty/cache/purge", json=body, headers={"authorization": f"Bearer {key}"}
    )


def test_purge_by_tenant_tag_and_everything(h: Harness) -> None:
    q1, q2 = unique("Purge me by tag"), unique("Purge me with everything")
    h.ask(q1, headers={"x-thrifty-cache-tags": "faq,release-1"})
    h.ask(q2)
    h.settle()
    assert cache_of(h.ask(q1)) == "exact"
    assert purge(h, {"tag": "release-1"}, key="sk-local-a").status_code == 403
    resp = purge(h, {"tag": "release-1"})
    assert resp.status_code == 200 and resp.json()["exact"] >= 1
    assert resp.json()["policies"] == ["default"]
    # A policy name with a typo is a 404 that names the policies, never "0 removed".
    typo = purge(h, {"policy": "defualt"})
    assert typo.status_code == 404 and typo.json()["error"]["param"] == "policy"
    assert "policies:" in typo.json()["error"]["message"]
    # A null field (an unset variable in a script) is a 400, not "every tenant".
    null = purge(h, {"tenant": None})
    assert null.status_code == 400 and null.json()["error"]["param"] == "tenant"
    assert "null" in null.json()["error"]["message"]
    assert cache_of(h.ask(q2)) == "exact"
    assert cache_of(h.ask(q1)) in ("miss", "semantic")
    assert cache_of(h.ask(q2)) == "exact"
    assert purge(h, {"route": "gpt-4o-mini", "olderThanSeconds": 0}).status_code == 200
    assert cache_of(h.ask(q2)) == "miss"
    assert purge(h, {}).status_code == 200
    # Entries are per route: an alias of the same model neither shares them nor keeps serving
    # what a purge of its route removed.
    q3 = unique("Which route stored me?")
    h.ask(q3)
    h.settle()
    assert cache_of(h.ask(q3, model="mini-alias")) == "miss"
    h.settle()
    assert cache_of(h.ask(q3, model="mini-alias")) == "exact"
    assert purge(h, {"route": "mini-alias"}).json()["exact"] == 1
    assert cache_of(h.ask(q3, model="mini-alias")) == "miss"
    assert cache_of(h.ask(q3)) == "exact"
    # A tag the cache could not store is refused, not dropped (a purge by it would miss).
    with pytest.raises(openai.BadRequestError) as refused:
        h.ask(unique("Tagged badly"), headers={"x-thrifty-cache-tags": "faq,user@example.com"})
    assert refused.value.code == "invalid_cache_header"
    assert refused.value.param == "x-thrifty-cache-tags"


def test_an_entry_serves_only_requests_whose_tags_it_carries(h: Harness) -> None:
    """A tag says what an answer depends on: a purge by it must remove every answer a request
    with that tag could be served. So an entry is served to requests carrying only tags it
    was stored with (or none), in both layers."""
    q = unique("What does the premium plan cost per month?")
    h.ask(q, headers={"x-thrifty-cache-tags": "prices-v1"})
    h.settle()
    assert cache_of(h.ask(q)) == "exact"  # no tags: no dependency declared
    assert cache_of(h.ask(q, headers={"x-thrifty-cache-tags": "prices-v1"})) == "exact"
    # Tagged with what the entry was not stored under: not served (by neither layer).
    other = h.ask(q, headers={"x-thrifty-cache-tags": "prices-v1,promo-7"})
    assert cache_of(other) == "miss"
    h.settle()  # its answer is stored under both tags
    assert cache_of(h.ask(q, headers={"x-thrifty-cache-tags": "promo-7"})) == "exact"
    assert purge(h, {"tag": "promo-7"}).json()["exact"] == 1
    # Nothing a promo-7 request could get is left.
    assert cache_of(h.ask(q, headers={"x-thrifty-cache-tags": "promo-7"})) == "miss"


def test_a_directive_on_a_second_header_line_is_obeyed(h: Harness) -> None:
    """`Cache-Control: max-age=600` and, on a line of its own, `Cache-Control: no-store`:
    nothing is stored (the second line was read past); tags on two lines are both kept."""
    auth = ("authorization", "Bearer sk-local-a")
    q = unique("Can I change my PIN online?")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": q}]}
    first = h.http.post(
        "/v1/chat/completions",
        json=body,
        headers=[auth, ("cache-control", "max-age=600"), ("cache-control", "no-store")],
    )
    assert first.status_code == 200 and cache_of(first) == "miss"
    h.settle()
    assert cache_of(h.ask(q)) == "miss"  # not stored
    tagged = unique("Is there a fee for a new card?")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": tagged}]}
    h.http.post(
        "/v1/chat/completions",
        json=body,
        headers=[auth, ("x-thrifty-cache-tags", "doc-1"), ("x-thrifty-cache-tags", "doc-2")],
    )
    h.settle()
    assert purge(h, {"tag": "doc-2"}).json()["exact"] == 1
    assert cache_of(h.ask(tagged)) == "miss"


def test_hits_are_recorded_as_saved_cost(h: Harness) -> None:
    def totals() -> dict[str, Any]:
        usage = h.http.get("/v1/thrifty/usage", headers={"authorization": "Bearer sk-local-b"})
        data: dict[str, Any] = usage.json()["totals"]
        return data

    before = totals()
    q = unique("What is the interest rate on savings?")
    miss = h.ask(q, h.b)
    h.settle()
    hit = h.ask(q, h.b)
    assert cache_of(hit) == "exact"
    wait_until(
        lambda: totals()["requests"] >= before["requests"] + 2, "team-b's miss and hit are recorded"
    )
    after = totals()
    saved = after["saved_by_lever_usd"].get("cache", 0.0) - before["saved_by_lever_usd"].get(
        "cache", 0.0
    )
    assert saved == pytest.approx(float(miss.headers["x-thrifty-cost-usd"]))
    assert float(hit.headers["x-thrifty-cost-usd"]) == 0.0


def test_a_hit_on_a_stream_that_carried_no_usage_is_worth_what_it_cost(tmp_path: Path) -> None:
    """A provider that sends no usage in streams (whatever `stream_options` asks): the miss is
    charged on the gateway's estimate, and hits on it, streamed or not, save that much."""
    sim = start_simulator(tmp_path / "sim", "--no-stream-usage")
    try:
        app = create_app(parse_config(cache_config(sim.url)))
        with TestClient(app) as http:
            h = Harness(http, sim)

            def totals() -> dict[str, Any]:
                key = {"authorization": "Bearer sk-local-a"}
                data: dict[str, Any] = http.get("/v1/thrifty/usage", headers=key).json()["totals"]
                return data

            def saved() -> float:
                return float(totals()["saved_by_lever_usd"].get("cache", 0.0))

            q = unique("Which documents do I need to open an account?")
            messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": q}]
            stream = h.a.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=messages, stream=True
            )
            assert "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
            h.settle()
            cost = totals()["cost_usd"]  # the miss, on the gateway's estimate
            assert cost > 0
            hit = h.ask(q)
            assert cache_of(hit) == "exact"
            wait_until(lambda: saved() > 0, "the hit is recorded")
            first = saved()
            assert first == pytest.approx(cost)
            again = h.a.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
            assert again.headers["x-thrifty-cache"] == "exact"
            chunks = list(again.parse())
            # The estimate prices the hit; it is not handed out as the provider's usage.
            assert all(c.usage is None for c in chunks)
            wait_until(lambda: saved() > first, "the streamed hit is recorded")
            assert saved() == pytest.approx(2 * first)
            h.a.close()
            h.b.close()
    finally:
        sim.stop()


def test_a_remote_embedding_backend_sends_its_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `openai` embedding backend calls its endpoint with the policy's key: a provider that
    requires one serves paraphrase lookups; without the key every lookup is a bypass."""
    sim = start_simulator(tmp_path / "sim", env={"THRIFTY_SIMULATOR_API_KEY": "sk-provider"})
    monkeypatch.setenv("TEST_PROVIDER_KEY", "sk-provider")
    base = local_config(sim.url)
    base["providers"][0]["apiKey"] = {"env": "TEST_PROVIDER_KEY"}
    spec = {
        "exact": {"enabled": False},
        "semantic": {
            "enabled": True,
            "embedding": {
                "backend": "openai",
                "model": "text-embedding-3-small",
                "dimensions": 1536,
                "endpoint": f"{sim.url}/v1",
            },
            "guard": {"enabled": False},
        },
    }
    try:
        for key, want in (({"env": "TEST_PROVIDER_KEY"}, "semantic"), (None, "bypass")):
            policy = {"spec": spec, "stores": {"embeddingApiKey": key} if key else {}}
            config = {**base, "cachePolicies": {"p": policy}, "defaultCachePolicy": "p"}
            with TestClient(create_app(parse_config(config))) as http:
                harness = Harness(http, sim)
                q = unique("Where can I see my card limit?")
                assert cache_of(harness.ask(q)) in ("miss", "bypass")
                harness.settle()
                assert cache_of(harness.ask(q)) == want
                harness.a.close()
                harness.b.close()
    finally:
        sim.stop()


def test_a_policy_with_both_layers_off_caches_and_coalesces_nothing(
    tmp_path: Path,
) -> None:
    """A route's way to opt out of the default policy: a policy with both layers off. Nothing
    is stored, and identical concurrent requests are not served each other's answer as
    "exact" hits (they were, coalesced, and booked as cache savings)."""
    from concurrent.futures import ThreadPoolExecutor

    slow = start_simulator(tmp_path / "sim", "--latency-ms", "400")
    policy = {"spec": {"exact": {"enabled": False}, "semantic": {"enabled": False}}}
    try:
        app = create_app(parse_config(cache_config(slow.url, policy)))
        with TestClient(app) as http:
            client = openai.OpenAI(
                base_url="http://t/v1", api_key="sk-local-a", http_client=http, max_retries=0
            )
            q = unique("Not cached anywhere")

            def one(_: int) -> str:
                raw = client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": q}]
                )
                return raw.headers.get("x-thrifty-cache", "")

            with ThreadPoolExecutor(3) as pool:
                seen = list(pool.map(one, range(3)))
            assert "exact" not in seen and "semantic" not in seen
            assert slow.stats()["requests"]["gpt-4o-mini"] == 3
            client.close()
    finally:
        slow.stop()
