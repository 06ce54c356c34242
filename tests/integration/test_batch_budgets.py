"""Deferred requests and Batch API lines count against budgets (real redis-server, a worker
process, the simulator): what a finished line cost is added to its tenant's budget, and a
tenant over its hard limit is refused new batches and deferred requests (429
`budget_exceeded`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis as redis_sync

from tests.integration.procs import Gateway, Simulator, start_gateway
from tests.integration.test_batch_flow import (
    Worker,
    batch_config,
    create_batch,
    wait_terminal,
)
from tests.services import RedisServer

pytestmark = pytest.mark.integration
HARD = {"period": "day", "hardLimitUsd": 0.0000001}  # the first finished line passes it


@pytest.fixture
def budget_stack(
    simulator: Simulator, redis: RedisServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Gateway]:
    client: Any = redis_sync.Redis.from_url(redis.url)
    for key in client.scan_iter("thrifty:budget:*"):
        client.delete(key)
    name = f"budgets-{request.node.name[-12:]}"  # a queue of its own per test
    config = batch_config(simulator, redis, tmp_path, name, mode="direct")
    config["tenants"] = [{**t, "budget": HARD} for t in config["tenants"]]
    config["ledger"] = {"redisUrl": redis.url}
    gw = start_gateway(tmp_path, config)
    worker = Worker(tmp_path, gw.config, "w1")
    yield gw
    worker.stop()
    gw.stop()


def spent(gw: Gateway, key: str) -> float:
    body = httpx.get(
        f"{gw.base_url()}/thrifty/budgets", headers={"authorization": f"Bearer {key}"}
    ).json()
    return float(sum(b["spent_usd"] for b in body["data"]))


def wait_spent(gw: Gateway, key: str) -> float:
    deadline = time.monotonic() + 15
    while (value := spent(gw, key)) <= 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def defer(gw: Gateway, key: str, content: str) -> httpx.Response:
    return httpx.post(
        f"{gw.base_url()}/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": content}]},
        headers={"authorization": f"Bearer {key}", "x-thrifty-defer": "true"},
    )


def assert_budget_exceeded(status: int, body: dict[str, Any], tenant: str) -> None:
    assert status == 429
    assert body["error"]["code"] == "budget_exceeded"
    assert body["error"]["type"] == "insufficient_quota"
    assert tenant in body["error"]["message"]


def test_deferred_spend_counts_and_blocks_new_batches(budget_stack: Gateway) -> None:
    gw, key = budget_stack, "sk-local-b"
    assert spent(gw, key) == 0
    accepted = defer(gw, key, "a deferred request that costs money")
    assert accepted.status_code == 202
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        polled = httpx.get(
            f"{gw.url}{accepted.json()['poll_url']}", headers={"authorization": f"Bearer {key}"}
        )
        if polled.status_code != 202:
            break
        time.sleep(0.1)
    assert polled.status_code == 200
    assert wait_spent(gw, key) > 0  # the deferred request's cost is in team-b's budget
    with pytest.raises(openai.RateLimitError) as info:
        create_batch(gw.openai(key), 2)
    assert_budget_exceeded(429, info.value.response.json(), "team-b")
    refused = defer(gw, key, "another deferred request")
    assert_budget_exceeded(refused.status_code, refused.json(), "team-b")
    # team-a has spent nothing: its batches are accepted
    assert create_batch(gw.openai("sk-local-a"), 1).status in ("validating", "in_progress")


def test_batch_line_spend_counts_and_blocks_deferred_requests(budget_stack: Gateway) -> None:
    gw, key = budget_stack, "sk-local-a"
    client = gw.openai(key)
    done = wait_terminal(client, create_batch(client, 3).id)
    assert done.status == "completed"
    assert wait_spent(gw, key) > 0  # the lines' cost is in team-a's budget
    refused = defer(gw, key, "a deferred request over the limit")
    assert_budget_exceeded(refused.status_code, refused.json(), "team-a")
    with pytest.raises(openai.RateLimitError) as info:
        create_batch(client, 1)
    assert_budget_exceeded(429, info.value.response.json(), "team-a")
    assert spent(gw, "sk-local-b") == 0  # team-b is not charged for team-a's lines
