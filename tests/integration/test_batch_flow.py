"""Batching end to end: the official `openai` client against the gateway, a real
redis-server, `thrifty batch-worker` processes and the simulator's Batch API."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis as redis_sync
import yaml

from tests.integration.procs import (
    Gateway,
    Simulator,
    _spawn,
    local_config,
    start_gateway,
    start_simulator,
)
from tests.services import RedisServer

pytestmark = pytest.mark.integration
KEY = "sk-local-a"
ADMIN = "sk-local-admin"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture(scope="module")
def batch_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    """A simulator whose Batch API runs 20x real time; `broken-model` always answers 500."""
    sim = start_simulator(
        tmp_path_factory.mktemp("batch-sim"),
        "--batch-speedup",
        "20",
        "--fault",
        "broken-model=500",
        "--retry-after",
        "0.01",
    )
    yield sim
    sim.stop()


def batch_config(
    sim: Simulator,
    redis: RedisServer,
    workdir: Path,
    name: str,
    cache: dict[str, Any] | None = None,
    gateway: str = "",
    **spec: Any,
) -> dict[str, Any]:
    config = local_config(sim.url)
    if gateway:  # as the operator renders it
        config["ledger"] = {"gateway": gateway}
    if cache is not None:
        config["cachePolicies"] = {"batch": cache}
        config["defaultCachePolicy"] = "batch"
    config["routes"].append(
        {
            "name": "broken-model",
            "targets": [{"provider": "simulator", "model": "broken-model"}],
            "maxRetries": 0,
        }
    )
    config["routes"].append(  # the primary always fails: every answer comes from the fallback
        {
            "name": "broken-first",
            "deferrable": True,
            "targets": [
                {"provider": "simulator", "model": "broken-model"},
                {"provider": "simulator", "model": "gpt-4o-mini"},
            ],
            "maxRetries": 0,
        }
    )
    config["batch"] = {
        "name": name,
        "redisUrl": redis.url,
        "filesDir": str(workdir / f"files-{name}"),
        "spec": {
            "mode": "provider",
            "flushWindowSeconds": 1,
            "pollIntervalSeconds": 1,
            "retries": {"maxAttempts": 3},
            "limits": {"maxLinesPerBatch": 500, "maxLinesPerJob": 500},
            **spec,
        },
    }
    return config


class Worker:
    def __init__(self, workdir: Path, config: dict[str, Any], consumer: str) -> None:
        self.path = workdir / f"worker-{consumer}.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"worker-{consumer}.log"
        self.proc, log_file = _spawn(
            [
                "-m",
                "thrifty_cli",
                "batch-worker",
                "--config",
                str(self.path),
                "--consumer",
                consumer,
                "--reclaim-idle-seconds",
                "1",
                "--sweep-seconds",
                "0.3",
            ],
            self.log_path,
        )
        log_file.close()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def stack(batch_sim: Simulator, redis: RedisServer, tmp_path: Path) -> Iterator[Any]:
    """start(name, **spec) -> (gateway, worker config); everything stopped at the end."""
    gateways: list[Gateway] = []
    workers: list[Worker] = []

    def start(
        name: str,
        sim: Simulator | None = None,
        cache: dict[str, Any] | None = None,
        gateway: str = "",
        **spec: Any,
    ) -> tuple[Gateway, Any]:
        config = batch_config(sim or batch_sim, redis, tmp_path, name, cache, gateway, **spec)
        gw = start_gateway(tmp_path, config)
        gateways.append(gw)

        def worker(consumer: str) -> Worker:
            w = Worker(tmp_path, gw.config, consumer)
            workers.append(w)
            return w

        return gw, worker

    yield start
    for w in workers:
        w.stop()
    for gw in gateways:
        gw.stop()
    httpx.post(
        f"{batch_sim.url}/sim/batches/faults",
        json={"fail_rate": 0, "fail_jobs": -1, "expire_next": 0, "forget_next": 0},
    )


def jsonl(items: list[dict[str, Any]]) -> bytes:
    return b"\n".join(orjson.dumps(i) for i in items) + b"\n"


def chat_line(i: int, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": f"Summarise item {i}"}]},
    }


def create_batch(client: openai.OpenAI, n: int) -> Any:
    """A batch of `n` chat lines (req-0 ... req-n-1), uploaded and created as a user does."""
    uploaded = client.files.create(
        file=("in.jsonl", jsonl([chat_line(i) for i in range(n)])), purpose="batch"
    )
    return client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def wait_terminal(client: openai.OpenAI, batch_id: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} not terminal after {timeout}s")


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    data = client.files.content(file_id).content
    return [orjson.loads(raw) for raw in data.splitlines() if raw.strip()]


def test_openai_batch_flow_end_to_end(stack: Any, batch_sim: Simulator) -> None:
    gw, worker = stack("flow")
    worker("w1")
    client = gw.openai(KEY)
    before = httpx.get(f"{batch_sim.url}/sim/batches/stats").json()
    uploaded = client.files.create(
        file=("in.jsonl", jsonl([chat_line(i) for i in range(40)])), purpose="batch"
    )
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert batch.status in ("validating", "in_progress")
    done = wait_terminal(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (40, 40)
    assert done.metadata == {"job": "nightly"}
    out = lines_of(client, done.output_file_id)
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(40)]
    assert all(o["response"]["status_code"] == 200 for o in out)
    assert out[0]["response"]["body"]["object"] == "chat.completion"
    assert done.error_file_id is None
    after = httpx.get(f"{batch_sim.url}/sim/batches/stats").json()
    assert after.get("batches_created", 0) - before.get("batches_created", 0) == 1
    listed = client.batches.list()
    assert any(b.id == batch.id for b in listed.data)
    # the ledger prices the lines at the batch price and records the saving under `batch`
    deadline = time.monotonic() + 10
    saved = 0.0
    while time.monotonic() < deadline and saved <= 0:
        usage = httpx.get(
            f"{gw.url}/v1/thrifty/usage", headers={"authorization": f"Bearer {ADMIN}"}
        ).json()
        saved = usage["totals"]["saved_by_lever_usd"]["batch"]
        time.sleep(0.2)
    assert saved > 0
    assert usage["totals"]["cost_usd"] == pytest.approx(saved, rel=0.05)


def test_partial_failures_and_expired_job_are_resubmitted(stack: Any, batch_sim: Simulator) -> None:
    gw, worker = stack("retry")
    httpx.post(
        f"{batch_sim.url}/sim/batches/faults",
        json={"fail_rate": 0.3, "fail_jobs": 1, "expire_next": 1},
    )
    worker("w1")
    client = gw.openai(KEY)
    before = httpx.get(f"{batch_sim.url}/sim/batches/stats").json()
    uploaded = client.files.create(
        file=("in.jsonl", jsonl([chat_line(i) for i in range(60)])), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_terminal(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 60
    out = lines_of(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == sorted(f"req-{i}" for i in range(60))
    assert done.error_file_id is None
    after = httpx.get(f"{batch_sim.url}/sim/batches/stats").json()
    assert after["batches_created"] - before.get("batches_created", 0) >= 2


def test_poison_line_is_dead_lettered_not_looped(stack: Any, redis: RedisServer) -> None:
    gw, worker = stack("poison")
    worker("w1")
    client = gw.openai(KEY)
    items = [chat_line(0), chat_line(1, model="broken-model"), chat_line(2)]
    uploaded = client.files.create(file=("in.jsonl", jsonl(items)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_terminal(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    errors = lines_of(client, done.error_file_id)
    assert [e["custom_id"] for e in errors] == ["req-1"]
    assert errors[0]["response"]["status_code"] == 500
    assert sorted(o["custom_id"] for o in lines_of(client, done.output_file_id)) == [
        "req-0",
        "req-2",
    ]
    client_r: Any = redis_sync.Redis.from_url(redis.url)
    dead = client_r.xrange("thrifty:batch:poison:dead")
    assert [fields[b"c"] for _, fields in dead] == [b"req-1"]
    # three attempts (maxAttempts), not a loop: nothing of this batch is left pending
    pending = client_r.xpending("thrifty:batch:poison:lines", "workers")
    assert pending["pending"] == 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"custom_id": "a"\n', "line 1: not valid JSON"),
        (jsonl([chat_line(1), chat_line(1)]), "line 2: duplicate custom_id 'req-1'"),
        (jsonl([chat_line(i) for i in range(501)]), "the file has 501 lines; the limit is 500"),
        (jsonl([{**chat_line(1), "url": "/v1/completions"}]), "line 1: url must be one of"),
        (jsonl([chat_line(1, model="no-such-model")]), "line 1: unknown model 'no-such-model'"),
    ],
    ids=["malformed", "duplicate", "too-many-lines", "unknown-url", "unknown-model"],
)
def test_bad_input_is_refused_and_nothing_stored(
    stack: Any, tmp_path: Path, content: bytes, expected: str
) -> None:
    gw, _ = stack("bad")
    client = gw.openai(KEY)
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("in.jsonl", content), purpose="batch")
    assert expected in str(info.value)
    assert info.value.code == "invalid_batch_input"
    assert client.files.list().data == []
    assert list((tmp_path / "files-bad").iterdir()) == []


def test_a_batch_create_with_wrongly_typed_fields_is_a_400(stack: Any) -> None:
    gw, _ = stack("typed")
    auth = {"authorization": f"Bearer {KEY}"}
    good = {"input_file_id": "file-x", "endpoint": "/v1/chat/completions"}
    for bad, param in (
        ({"endpoint": ["a"]}, "endpoint"),
        ({"input_file_id": 5}, "input_file_id"),
        ({"input_file_id": None}, "input_file_id"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ):
        resp = httpx.post(f"{gw.url}/v1/batches", json={**good, **bad}, headers=auth)
        assert resp.status_code == 400, (bad, resp.text)
        assert resp.json()["error"]["param"] == param
    deep = b'{"input_file_id": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    resp = httpx.post(f"{gw.url}/v1/batches", content=deep, headers=auth)
    assert resp.status_code == 400 and "too deeply" in resp.json()["error"]["message"]


def test_deferred_request_is_accepted_and_polled(stack: Any) -> None:
    gw, worker = stack("defer", mode="direct")
    worker("w1")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "later is fine"}]}
    headers = {"authorization": f"Bearer {KEY}", "x-thrifty-defer": "true"}
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers)
    assert resp.status_code == 202
    poll = resp.json()["poll_url"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = httpx.get(f"{gw.url}{poll}", headers={"authorization": f"Bearer {KEY}"})
        if got.status_code != 202:
            break
        time.sleep(0.1)
    assert got.status_code == 200
    assert got.json()["object"] == "chat.completion"
    # Booked once: when its line finished (the 202 that accepted it is not a request of its own)
    admin = {"authorization": f"Bearer {ADMIN}"}
    while time.monotonic() < deadline:
        totals = httpx.get(f"{gw.url}/v1/thrifty/usage", headers=admin).json()["totals"]
        if totals["served_by_lever"].get("batch"):
            break
        time.sleep(0.1)
    assert totals["served_by_lever"]["batch"] == 1 and totals["requests"] == 1
    assert totals["cost_usd"] > 0
    # a route whose policy does not allow deferral is served at once
    body["model"] = "gpt-4o-mini"
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers)
    assert resp.status_code == 200
    assert resp.headers["x-thrifty-deferred"] == "refused"


def test_worker_sigkilled_mid_batch_every_line_exactly_once(stack: Any, tmp_path: Path) -> None:
    slow = start_simulator(tmp_path / "slow-sim", "--latency-ms", "15")
    try:
        gw, worker = stack("kill", sim=slow, mode="direct", direct={"concurrency": 4})
        first = worker("w1")
        client = gw.openai(KEY)
        uploaded = client.files.create(
            file=("in.jsonl", jsonl([chat_line(i) for i in range(400)])), purpose="batch"
        )
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = client.batches.retrieve(batch.id).request_counts
            assert counts is not None
            if counts.completed >= 40:
                break
            time.sleep(0.05)
        first.kill()
        mid = client.batches.retrieve(batch.id)
        assert mid.status == "in_progress"
        assert mid.request_counts is not None and mid.request_counts.completed < 400
        worker("w2")
        done = wait_terminal(client, batch.id)
        assert done.status == "completed"
        ids = [o["custom_id"] for o in lines_of(client, done.output_file_id)]
        ids += [e["custom_id"] for e in lines_of(client, done.error_file_id)]
        assert len(ids) == 400
        assert sorted(ids) == sorted(f"req-{i}" for i in range(400))
    finally:
        slow.stop()


def test_lines_check_the_cache_and_fill_it(
    stack: Any, batch_sim: Simulator, redis: RedisServer
) -> None:
    # Rendered as the operator does (namespace in the keyspace, gateway in the scope): the
    # worker keys lines as the gateway keys requests.
    gw, worker = stack(
        "cached",
        cache={
            "spec": {"exact": {"enabled": True}},
            "stores": {"redisUrl": redis.url, "owner": "team-ns"},
        },
        gateway="team-ns/thrifty",
    )
    worker("w1")
    client = gw.openai(KEY)
    items = [chat_line(i) for i in range(100, 110)]
    for i in items:  # unique prompts for this test, so nothing is cached yet
        i["body"]["messages"][0]["content"] += " (cache test)"

    def run() -> Any:
        uploaded = client.files.create(file=("in.jsonl", jsonl(items)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        return wait_terminal(client, batch.id)

    first = run()
    jobs = httpx.get(f"{batch_sim.url}/sim/batches/stats").json()["batches_created"]
    second = run()
    assert second.status == "completed"
    assert second.request_counts is not None and second.request_counts.completed == 10
    assert httpx.get(f"{batch_sim.url}/sim/batches/stats").json()["batches_created"] == jobs
    answers = {
        o["custom_id"]: o["response"]["body"] for o in lines_of(client, first.output_file_id)
    }
    again = {o["custom_id"]: o["response"]["body"] for o in lines_of(client, second.output_file_id)}
    assert {k: v["choices"] for k, v in again.items()} == {
        k: v["choices"] for k, v in answers.items()
    }
    # an interactive request for a batch line is now an exact cache hit
    hit = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json=items[0]["body"],
        headers={"authorization": f"Bearer {KEY}"},
    )
    assert hit.headers["x-thrifty-cache"] == "exact"
    # Entries the worker filled carry the target model, as the gateway's own do: a purge by
    # the model the route sends to removes them all (a dated answer model: test_batch_units).
    purged = httpx.post(
        f"{gw.url}/v1/thrifty/cache/purge",
        json={"model": "gpt-4o-mini"},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert purged.status_code == 200 and purged.json()["exact"] >= 10, purged.text
    gone = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json=items[1]["body"],
        headers={"authorization": f"Bearer {KEY}"},
    )
    assert gone.headers["x-thrifty-cache"] == "miss"


def test_worker_sigkilled_while_a_provider_job_runs_resumes_polling_it(
    stack: Any, tmp_path: Path, redis: RedisServer
) -> None:
    slow = start_simulator(tmp_path / "slow-batch-sim", "--batch-speedup", "0.25")
    try:
        gw, worker = stack("kill-provider", sim=slow)
        first = worker("w1")
        client = gw.openai(KEY)
        batch = create_batch(client, 100)
        r: Any = redis_sync.Redis.from_url(redis.url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not r.hlen("thrifty:batch:kill-provider:jobs"):
            time.sleep(0.05)
        assert r.hlen("thrifty:batch:kill-provider:jobs") == 1
        first.kill()
        worker("w2")
        done = wait_terminal(client, batch.id)
        assert done.status == "completed"
        ids = [o["custom_id"] for o in lines_of(client, done.output_file_id)]
        assert sorted(ids) == sorted(f"req-{i}" for i in range(100))
        # the restarted worker polled the running job instead of submitting the lines again
        assert httpx.get(f"{slow.url}/sim/batches/stats").json()["batches_created"] == 1
        assert r.hlen("thrifty:batch:kill-provider:jobs") == 0
    finally:
        slow.stop()


def test_worker_stopped_while_the_provider_creates_a_job_records_it(
    stack: Any, tmp_path: Path, redis: RedisServer
) -> None:
    """A rolling update stops the worker (SIGTERM) while the provider is creating its batch
    job. The worker finishes that submit and records the job before it exits, so the next
    worker polls it: the lines are not submitted (and billed) a second time."""
    slow = start_simulator(tmp_path / "slow-create-sim", "--batch-create-ms", "1500")
    try:
        gw, worker = stack("stop-submit", sim=slow)
        first = worker("w1")
        client = gw.openai(KEY)
        batch = create_batch(client, 20)

        def provider_stats() -> dict[str, int]:
            stats: dict[str, int] = httpx.get(f"{slow.url}/sim/batches/stats").json()
            return stats

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not provider_stats().get("files_uploaded"):
            time.sleep(0.05)
        time.sleep(0.3)  # the worker's create call is now in flight (it takes 1.5 s)
        first.stop()  # SIGTERM, and wait for the exit
        assert first.proc.returncode == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not provider_stats().get("batches_created"):
            time.sleep(0.05)
        assert provider_stats().get("batches_created") == 1  # the provider made (bills) it
        r: Any = redis_sync.Redis.from_url(redis.url)
        assert r.hlen("thrifty:batch:stop-submit:jobs") == 1  # recorded before exiting
        worker("w2")
        done = wait_terminal(client, batch.id)
        assert done.status == "completed"
        ids = [o["custom_id"] for o in lines_of(client, done.output_file_id)]
        assert sorted(ids) == sorted(f"req-{i}" for i in range(20))
        assert provider_stats()["batches_created"] == 1
    finally:
        slow.stop()


def test_batch_past_its_completion_window_expires_with_an_error_file(
    stack: Any, redis: RedisServer
) -> None:
    gw, worker = stack("window")
    client = gw.openai(KEY)
    uploaded = client.files.create(
        file=("in.jsonl", jsonl([chat_line(i) for i in range(5)])), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    r: Any = redis_sync.Redis.from_url(redis.url)
    key = f"thrifty:batch:window:batch:{batch.id}"
    record = orjson.loads(r.get(key))
    r.set(key, orjson.dumps({**record, "expires_at": int(time.time()) - 1}))
    worker("w1")  # starts after the window closed
    done = wait_terminal(client, batch.id)
    assert done.status == "expired"
    assert done.expired_at is not None
    errors = lines_of(client, done.error_file_id)
    assert sorted(e["custom_id"] for e in errors) == sorted(f"req-{i}" for i in range(5))
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}


def test_fallback_answers_do_not_fill_the_primary_cache(stack: Any, redis: RedisServer) -> None:
    """The exact cache is keyed by the route's primary target: a line (or a deferred request)
    answered by a fallback target must not be stored there."""
    gw, worker = stack(
        "fallback",
        cache={"spec": {"exact": {"enabled": True}}, "stores": {"redisUrl": redis.url}},
        mode="direct",
    )
    worker("w1")
    client = gw.openai(KEY)
    items = [chat_line(i, model="broken-first") for i in range(200, 204)]
    for i in items:
        i["body"]["messages"][0]["content"] += " (fallback test)"
    uploaded = client.files.create(file=("in.jsonl", jsonl(items)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_terminal(client, batch.id)
    assert done.status == "completed"
    out = lines_of(client, done.output_file_id)
    assert len(out) == 4 and {o["response"]["body"]["model"] for o in out} == {"gpt-4o-mini"}
    # a deferred request on the same route, answered by the fallback too
    deferred_body = {
        "model": "broken-first",
        "messages": [{"role": "user", "content": "deferred (fallback test)"}],
    }
    auth = {"authorization": f"Bearer {KEY}"}
    resp = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json=deferred_body,
        headers={**auth, "x-thrifty-defer": "true"},
    )
    assert resp.status_code == 202
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = httpx.get(f"{gw.url}{resp.json()['poll_url']}", headers=auth)
        if got.status_code != 202:
            break
        time.sleep(0.1)
    assert got.status_code == 200 and got.json()["model"] == "gpt-4o-mini"
    # interactive requests for the same prompts are not served the fallback's answers
    for body in [items[0]["body"], deferred_body]:
        again = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=auth)
        assert again.status_code == 200
        assert again.headers.get("x-thrifty-cache") != "exact"


def test_provider_job_that_cannot_be_retrieved_is_given_up_and_resubmitted(
    stack: Any, batch_sim: Simulator, redis: RedisServer
) -> None:
    """The provider forgets the first job (every poll answers 404): after a few failed polls
    its lines go into a new job instead of waiting forever."""
    gw, worker = stack("forgotten")
    httpx.post(f"{batch_sim.url}/sim/batches/faults", json={"forget_next": 1})
    worker("w1")
    client = gw.openai(KEY)
    before = httpx.get(f"{batch_sim.url}/sim/batches/stats").json()
    uploaded = client.files.create(
        file=("in.jsonl", jsonl([chat_line(i) for i in range(10)])), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_terminal(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 10
    ids = sorted(o["custom_id"] for o in lines_of(client, done.output_file_id))
    assert ids == sorted(f"req-{i}" for i in range(10))
    after = httpx.get(f"{batch_sim.url}/sim/batches/stats").json()
    assert after["batches_forgotten"] - before.get("batches_forgotten", 0) == 1
    assert after["batches_created"] - before.get("batches_created", 0) == 2
    r: Any = redis_sync.Redis.from_url(redis.url)
    assert r.hlen("thrifty:batch:forgotten:jobs") == 0
    assert r.hlen("thrifty:batch:forgotten:jobfailures") == 0


def test_a_cancelled_batch_cancels_its_provider_job(
    stack: Any, tmp_path: Path, redis: RedisServer
) -> None:
    """A batch cancelled while its lines wait in a provider job: the job is cancelled at the
    provider (its lines never run, never billed) and the batch is `cancelled` without waiting
    for the job to finish on its own, each line with an error saying so."""
    slow = start_simulator(tmp_path / "slow-jobs-sim", "--batch-speedup", "0.05")  # 10 s to start
    try:
        gw, worker = stack("cancel-job", sim=slow)
        worker("w1")
        client = gw.openai(KEY)
        batch = create_batch(client, 20)
        r: Any = redis_sync.Redis.from_url(redis.url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not r.hlen("thrifty:batch:cancel-job:jobs"):
            time.sleep(0.1)
        assert r.hlen("thrifty:batch:cancel-job:jobs") == 1  # the lines are at the provider
        started = time.monotonic()
        assert client.batches.cancel(batch.id).status == "cancelling"
        done = wait_terminal(client, batch.id, timeout=60)
        assert done.status == "cancelled"
        assert time.monotonic() - started < 30  # the job would have run 20 lines, then ended
        errors = lines_of(client, done.error_file_id)
        assert sorted(e["custom_id"] for e in errors) == sorted(f"req-{i}" for i in range(20))
        assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
        stats = httpx.get(f"{slow.url}/sim/batches/stats").json()
        assert stats.get("lines", 0) == 0  # nothing ran (nor was billed) at the provider
    finally:
        slow.stop()


def test_a_deferred_request_with_cache_directives_keeps_out_of_the_line_cache(
    stack: Any, redis: RedisServer
) -> None:
    """A deferred request's line was answered from, and filled, the exact cache whatever its
    directives: `no-store` was stored, and with a shared policy served to other tenants. A
    request carrying cache directives or tags now keeps out of the line cache; one without
    still fills it."""
    gw, worker = stack(
        "defer-directives",
        cache={"spec": {"scope": "shared"}, "stores": {"redisUrl": redis.url}},
        mode="direct",
    )
    worker("w1")

    def deferred(text: str, **headers: str) -> None:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
        auth = {"authorization": f"Bearer {KEY}", "x-thrifty-defer": "true"}
        resp = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers={**auth, **headers})
        assert resp.status_code == 202
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = httpx.get(f"{gw.url}{resp.json()['poll_url']}", headers=auth)
            if got.status_code != 202:
                break
            time.sleep(0.1)
        assert got.status_code == 200

    def cached_for_b(text: str) -> int:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
        headers = {"authorization": "Bearer sk-local-b", "cache-control": "only-if-cached"}
        return httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers).status_code

    secret = f"not to be stored {time.time_ns()}"
    deferred(secret, **{"cache-control": "no-store"})
    assert cached_for_b(secret) == 504  # not stored, so not served to another tenant
    shared = f"fine to share {time.time_ns()}"
    deferred(shared)
    assert cached_for_b(shared) == 200  # the line cache still fills the shared cache


def test_a_provider_refusing_the_job_is_reported_in_the_gateways_words(
    redis: RedisServer, tmp_path: Path
) -> None:
    """The provider refuses the worker's key (401): every line fails with `submit_failed` and a
    message of the gateway's (the status), not the provider's text, which quotes the key and
    would reach every tenant whose lines shared the job."""
    sim = start_simulator(
        tmp_path / "keyed", "--api-key", "sk-provider-right", "--batch-speedup", "50"
    )
    key_file = tmp_path / "provider-key"
    key_file.write_text("sk-provider-stale-9f8e7d\n")
    config = batch_config(sim, redis, tmp_path, "keyed", None, "", retries={"maxAttempts": 1})
    config["providers"][0]["apiKey"] = {"file": str(key_file)}
    gw = start_gateway(tmp_path, config)
    worker = Worker(tmp_path, gw.config, "w1")
    try:
        client = gw.openai(KEY)
        done = wait_terminal(client, create_batch(client, 2).id, timeout=60)
        errors = lines_of(client, done.error_file_id)
        assert [e["custom_id"] for e in errors] == ["req-0", "req-1"]
        for e in errors:
            assert e["error"]["code"] == "submit_failed"
            assert e["error"]["message"] == "the provider did not accept the batch job (HTTP 401)"
        assert "9f8e7d" not in client.files.content(done.error_file_id).text
    finally:
        worker.stop()
        gw.stop()
        sim.stop()
