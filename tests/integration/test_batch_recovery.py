"""Batch creation that is cut short, on a real redis-server: a small batch is created in one
transaction; a large one whose enqueueing stops half-way is failed by the worker's sweeper
(with an error saying why) instead of staying `validating` forever, and its queued lines are
not run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as redis_sync

from tests.integration.procs import Simulator
from tests.integration.test_batch_flow import Worker, batch_config
from tests.services import RedisServer
from thrifty_gateway.services.batching.files import FilesystemStore
from thrifty_gateway.services.batching.finalize import finalize
from thrifty_gateway.services.batching.model import BatchRecord, Line, new_id
from thrifty_gateway.services.batching.queue import CHUNK, RedisQueue

pytestmark = pytest.mark.integration


def queue_for(redis: RedisServer, name: str) -> RedisQueue:
    return RedisQueue.from_url(redis.url, name, max_attempts=3, dead_letter=True, password=None)


def lines_for(batch_id: str, n: int, model: str = "gpt-4o-mini") -> list[Line]:
    return [
        Line(batch_id, f"req-{i}", "chat", {"model": model, "messages": [{"role": "user"}]})
        for i in range(n)
    ]


async def test_small_batch_is_created_in_one_step(redis: RedisServer) -> None:
    queue = queue_for(redis, "atomic")
    try:
        record = BatchRecord(id=new_id("batch"), endpoint="/v1/chat/completions", tenant="t")
        created = await queue.create(record, lines_for(record.id, 3))
        assert created.status == "in_progress"
        assert created.expires_at is not None and created.in_progress_at is not None
        stored = await queue.get(record.id)
        assert stored is not None and stored.status == "in_progress"
        assert stored.request_counts.total == 3
        assert record.id in await queue.active()
        assert await queue.redis.xlen(queue.keys.stream) == 3
    finally:
        await queue.aclose()


async def interrupted_batch(queue: RedisQueue, n: int) -> str:
    """A batch whose creation dies after the first chunk of lines (a line that cannot be
    encoded stands in for the gateway crashing)."""
    record = BatchRecord(id=new_id("batch"), endpoint="/v1/chat/completions", tenant="t")
    lines = lines_for(record.id, n)
    lines[CHUNK + 1] = Line(record.id, "bad", "chat", {"model": "gpt-4o-mini", "x": object()})
    with pytest.raises(TypeError):
        await queue.create(record, lines)
    return record.id


async def test_interrupted_creation_is_failed_once_stale(
    redis: RedisServer, tmp_path: Path
) -> None:
    queue = queue_for(redis, "interrupted")
    store = FilesystemStore(tmp_path / "files", 10**9)
    try:
        batch_id = await interrupted_batch(queue, CHUNK + 100)
        stuck = await queue.get(batch_id)
        assert stuck is not None and stuck.status == "validating"
        assert batch_id in await queue.active()  # so that the sweeper sees it
        # not stale yet: left alone
        assert not await finalize(queue, store, batch_id, "w", stale_validating_seconds=600)
        record = await queue.get(batch_id)
        assert record is not None and record.status == "validating"
        # stale: failed, with an error saying why, and no longer swept
        assert await finalize(queue, store, batch_id, "w", stale_validating_seconds=0)
        failed = await queue.get(batch_id)
        assert failed is not None and failed.status == "failed"
        assert failed.failed_at is not None
        assert failed.errors is not None
        assert failed.errors["data"][0]["code"] == "enqueue_interrupted"
        assert batch_id not in await queue.active()
    finally:
        await queue.aclose()


async def test_worker_fails_a_stuck_batch_and_skips_its_lines(
    redis: RedisServer, simulator: Simulator, tmp_path: Path
) -> None:
    name = "stuck"
    queue = queue_for(redis, name)
    try:
        batch_id = await interrupted_batch(queue, CHUNK + 5)
    finally:
        await queue.aclose()
    r: Any = redis_sync.Redis.from_url(redis.url)
    key = f"thrifty:batch:{name}:batch:{batch_id}"
    record = orjson.loads(r.get(key))
    r.set(key, orjson.dumps({**record, "created_at": int(time.time()) - 3600}))
    before = simulator.stats()["requests"].get("gpt-4o-mini", 0)
    config = batch_config(simulator, redis, tmp_path, name, mode="direct")
    worker = Worker(tmp_path, config, "w1")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pending = r.xpending(f"thrifty:batch:{name}:lines", "workers")["pending"]
            status = orjson.loads(r.get(key))["status"]
            if status == "failed" and pending == 0 and r.xlen(f"thrifty:batch:{name}:lines") == 0:
                break
            time.sleep(0.2)
        stored = orjson.loads(r.get(key))
        assert stored["status"] == "failed"
        assert stored["errors"]["data"][0]["code"] == "enqueue_interrupted"
        assert r.xlen(f"thrifty:batch:{name}:lines") == 0  # every queued line was answered
        results = r.hgetall(f"thrifty:batch:{name}:results:{batch_id}")
        assert len(results) == CHUNK
        assert {orjson.loads(v)["ec"] for v in results.values()} == {"batch_failed"}
        assert simulator.stats()["requests"].get("gpt-4o-mini", 0) == before  # none was run
    finally:
        worker.stop()


def test_ledger_lines_held_by_a_gateway_that_died_are_recorded_by_another(
    simulator: Simulator, redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers write each finished line to the ledger stream; a gateway reads it and
    acknowledges it once recorded. A gateway that dies between the two leaves its lines pending
    under its name: another gateway takes them over once they have idled, records them, and
    drops the dead consumer."""
    from fastapi.testclient import TestClient

    from thrifty_core.config import parse_config
    from thrifty_gateway.app import create_app
    from thrifty_gateway.services.batching import stage as batch_stage
    from thrifty_gateway.services.batching.model import Keys

    name = f"orphans-{time.time_ns()}"
    keys = Keys(name)
    client: Any = redis_sync.Redis.from_url(redis.url)
    client.xgroup_create(keys.ledger, keys.ledger_group, id="0", mkstream=True)
    for i in range(3):
        client.xadd(
            keys.ledger,
            {
                "t": "team-a",
                "r": "default",
                "m": "gpt-4o-mini",
                "p": 10,
                "c": 5,
                "u": 0.25,
                "s": 0.25,
                "ok": "1",
                "lv": "batch",
                "n": i,
            },
        )
    # The dead gateway: read them, never acknowledged them.
    client.xreadgroup(keys.ledger_group, "gateway-gone-1", {keys.ledger: ">"}, count=10)
    monkeypatch.setattr(batch_stage, "SYNC_MIN_IDLE_MS", 200)
    time.sleep(0.3)
    config = parse_config(batch_config(simulator, redis, tmp_path, name))
    with TestClient(create_app(config)) as gw:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            usage = gw.get(
                "/v1/thrifty/usage", headers={"authorization": "Bearer sk-local-admin"}
            ).json()
            if usage["totals"]["requests"] >= 3:
                break
            time.sleep(0.1)
        assert usage["totals"]["requests"] == 3
        assert usage["totals"]["cost_usd"] == pytest.approx(0.75)
        assert client.xpending(keys.ledger, keys.ledger_group)["pending"] == 0
        consumers = [c["name"] for c in client.xinfo_consumers(keys.ledger, keys.ledger_group)]
        assert b"gateway-gone-1" not in consumers
    client.close()


async def test_lines_of_a_dropped_provider_job_are_reclaimed(redis: RedisServer) -> None:
    """A worker gives up on a provider job, hands its lines to direct retries and drops the
    job, then dies before the retries finish. The lines still point at the dropped job; they
    must be reclaimed (by another worker, or by the same one when it restarts), not left
    pending for ever as if the job still held them."""
    queue = queue_for(redis, f"dropped-{time.time_ns()}")
    try:
        await queue.ensure_groups()
        (line,) = lines_for("batch_x", 1)
        await queue.redis.xadd(queue.keys.stream, line.fields())
        ((entry_id, _),) = await queue.read("worker-a", 10, 100)
        await queue.save_job("job-1", {"lines": {}}, [entry_id])
        assert await queue.reclaim("worker-b", 0) == []  # inside a live job: not reclaimed
        await queue.drop_job("job-1")
        assert [e for e, _ in await queue.reclaim("worker-b", 0)] == [entry_id]
        own = await queue.read("worker-b", 10, 0, own=True)
        assert [e for e, _ in await queue.outside_jobs(own)] == [entry_id]
    finally:
        await queue.aclose()
