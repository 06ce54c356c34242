"""Capture through a real gateway process (simulator as the teacher): tenant scoping of the
captured data, the logprobs capture asks for never reaching clients or the cache, and the
students admin endpoint."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import GatewayFactory
from tests.integration.procs import Gateway
from thrifty_core.student.store import FileDatasetStore

pytestmark = pytest.mark.integration

ROUTE = "gpt-4o-mini"
KEYS = {"team-a": "sk-local-a", "team-b": "sk-local-b"}
ADMIN_KEY = "sk-local-admin"


def wait_for(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cond()


def student(tmp: Path, **capture: Any) -> dict[str, Any]:
    """A classifier student with no trained version yet: the teacher answers, capture runs."""
    return {
        "route": ROUTE,
        "name": "intent",
        "kind": "classifier",
        "mode": "active",
        "artifactPath": str(tmp / "artifacts"),
        "captureDir": str(tmp / "capture"),
        "capture": {"maxExamples": 1000, **capture},
    }


def records(tmp: Path) -> list[dict[str, Any]]:
    store = FileDatasetStore(tmp / "capture", writer="reader")
    return [json.loads(line) for shard in store.shards() for line in store.read(shard)]


def finished(gw: Gateway, tenant: str) -> int:
    """Requests of `tenant` whose after-hooks (capture included) have run: the gateway counts
    a request only after its stages' after_upstream hooks."""
    text = httpx.get(f"{gw.url}/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "thrifty_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("tenant") == tenant:
                total += sample.value
    return int(total)


def post(gw: Gateway, tenant: str, text: str, **extra: Any) -> httpx.Response:
    resp = httpx.post(
        f"{gw.base_url()}/chat/completions",
        headers={"authorization": f"Bearer {KEYS[tenant]}"},
        json={"model": ROUTE, "messages": [{"role": "user", "content": text}], **extra},
        timeout=20,
    )
    assert resp.status_code == 200, resp.text
    return resp


def ask(gw: Gateway, tenant: str, text: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = post(gw, tenant, text, **extra).json()
    return body


def test_only_listed_tenants_are_captured(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    gw = gateway_factory(students=[student(tmp_path, tenants=["team-a"])])
    for i in range(5):
        ask(gw, "team-b", f"team-b secret number {i}")
    for i in range(5):
        ask(gw, "team-a", f"team-a question {i}")
    wait_for(lambda: finished(gw, "team-b") == 5 and finished(gw, "team-a") == 5)
    wait_for(lambda: len(records(tmp_path)) == 5)
    lines = records(tmp_path)
    assert {r["tenant"] for r in lines} == {"team-a"}
    assert not any("team-b" in r["input"] for r in lines)  # never captured


def test_capture_logprobs_reach_neither_the_client_nor_the_cache(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    gw = gateway_factory(cache=True, students=[student(tmp_path, logprobs=True)])
    first = post(gw, "team-a", "what is the exchange rate today?")
    assert first.headers["x-thrifty-cache"] == "miss"
    assert first.json()["choices"][0]["logprobs"] is None  # the client did not ask
    wait_for(lambda: finished(gw, "team-a") == 1)
    (record,) = records(tmp_path)
    assert record["logprobs"], "the teacher was asked for logprobs for the capture"
    # the same request again: answered from the exact cache, still without logprobs
    again = post(gw, "team-a", "what is the exchange rate today?")
    assert again.headers["x-thrifty-cache"] == "exact"
    assert again.json()["choices"][0]["logprobs"] is None
    assert again.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    # a streamed request gets no logprobs either
    with httpx.stream(
        "POST",
        f"{gw.base_url()}/chat/completions",
        headers={"authorization": f"Bearer {KEYS['team-a']}"},
        json={
            "model": ROUTE,
            "messages": [{"role": "user", "content": "how do I top up by card?"}],
            "stream": True,
        },
        timeout=20,
    ) as stream:
        events = [line[6:] for line in stream.iter_lines() if line.startswith("data: {")]
    chunks = [json.loads(e) for e in events]
    assert chunks and all(c["logprobs"] is None for ch in chunks for c in ch["choices"])
    # a client that asks for logprobs gets them (its own cache key)
    mine = ask(gw, "team-a", "what is the exchange rate today?", logprobs=True)
    assert mine["choices"][0]["logprobs"]["content"]


def test_students_admin_endpoint_shows_each_route(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    gw = gateway_factory(students=[student(tmp_path, tenants=["team-a"])])
    ask(gw, "team-a", "where is my card?")
    ask(gw, "team-b", "where is my card?")
    wait_for(lambda: finished(gw, "team-a") == 1 and finished(gw, "team-b") == 1)
    url = f"{gw.url}/v1/thrifty/students"
    assert httpx.get(url).status_code == 401  # no key
    tenant = httpx.get(url, headers={"authorization": f"Bearer {KEYS['team-a']}"})
    assert tenant.status_code == 403  # a tenant key is not enough
    resp = httpx.get(url, headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "list" and body["replica"]
    (row,) = body["data"]
    assert row["student"] == "intent" and row["route"] == ROUTE
    assert row["mode"] == "active" and row["version"] == ""  # nothing trained yet
    assert row["demoted"] is False and row["agreement"] is None and row["comparisons"] == 0
    assert row["served"] == {"no_student": 2}
    assert row["captured"] == 1  # team-b is not captured


def test_students_endpoint_without_students_is_empty(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    resp = httpx.get(
        f"{gw.url}/v1/thrifty/students", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert resp.status_code == 200 and resp.json()["data"] == []


def test_only_the_teachers_complete_answers_become_training_data(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    """A fallback model's answer (the teacher failed), an answer cut by max_tokens, an
    exchange the client asked to be kept nowhere, and a request the student could never
    answer (tools) are not captured; the teacher's own complete answer is."""
    routes = [
        {
            "name": ROUTE,
            "targets": [
                {"provider": "simulator", "model": "broken-model"},
                {"provider": "simulator", "model": "gpt-4o-mini"},
            ],
            "maxRetries": 0,
        },
        {"name": "teacher", "targets": [{"provider": "simulator", "model": "gpt-4o"}]},
    ]
    fallback = student(tmp_path / "fb")
    teacher = {**student(tmp_path / "t"), "route": "teacher", "name": "teacher-intent"}
    gw = gateway_factory(students=[fallback, teacher], routes=routes)
    answered = ask(gw, "team-a", "where is my card?")
    assert answered["model"].startswith("gpt-4o-mini")  # the fallback answered the client

    def teacher_ask(text: str, **extra: Any) -> dict[str, Any]:
        resp = httpx.post(
            f"{gw.base_url()}/chat/completions",
            headers={"authorization": f"Bearer {KEYS['team-a']}", **extra.pop("headers", {})},
            json={"model": "teacher", "messages": [{"role": "user", "content": text}], **extra},
            timeout=20,
        )
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    cut = teacher_ask("Explain the whole history of card payment networks", max_tokens=3)
    assert cut["choices"][0]["finish_reason"] == "length"
    teacher_ask("where is my parcel?", headers={"cache-control": "no-store"})
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    teacher_ask("what is my balance?", tools=[tool])
    teacher_ask("how do I top up?")
    wait_for(lambda: finished(gw, "team-a") == 5)
    wait_for(lambda: len(records(tmp_path / "t")) == 1)
    (kept,) = records(tmp_path / "t")
    assert kept["input"] == "how do I top up?" and kept["model"].startswith("gpt-4o")
    assert records(tmp_path / "fb") == []
