"""Batch creation that is cut short, on a real redis-server: a small batch is created in one
transaction; a large one whose enqueueing stops half-way is failed by the worker's sweeper
(with an error saying why) instead of staying `validating` forever, and its queued lines are
not run."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis as redis_sync
from fastapi.testclient import TestClient

from tests.integration.procs import Simulator, local_config, start_simulator
from tests.integration.test_batch_flow import Worker, batch_config
from tests.services import RedisServer, free_port, start_redis
from thrifty_core.config import GatewayConfig, ProviderConfig, parse_config
from thrifty_gateway.app import create_app
from thrifty_gateway.services.batching import stage as batch_stage
from thrifty_gateway.services.batching.files import FilesystemStore
from thrifty_gateway.services.batching.finalize import finalize
from thrifty_gateway.services.batching.main import FollowingBatches
from thrifty_gateway.services.batching.model import BatchRecord, Keys, Line, Result, new_id
from thrifty_gateway.services.batching.provider import OpenAIBatches, job_line, upload_name
from thrifty_gateway.services.batching.queue import CHUNK, PendingDelete, RedisQueue
from thrifty_gateway.services.batching.stage import BatchStage
from thrifty_gateway.services.batching.worker import Worker as BatchWorker
from thrifty_gateway.services.batching.worker import WorkerOptions
from thrifty_gateway.services.pipeline import Target
from thrifty_gateway.services.upstream import HttpUpstream, ProviderKeys

pytestmark = pytest.mark.integration


def queue_for(redis: RedisServer, name: str) -> RedisQueue:
    return RedisQueue.from_url(redis.url, name, max_attempts=3, dead_letter=True, password=None)


def lines_for(batch_id: str, n: int, model: str = "gpt-4o-mini") -> list[Line]:
    return [
        Line(batch_id, f"req-{i}", "chat", {"model": model, "messages": [{"role": "user"}]})
        for i in range(n)
    ]


def finished_lines(redis: RedisServer, name: str, n: int) -> tuple[Any, Keys]:
    """Queue `name`'s ledger stream holding `n` finished lines (team-a, 0.25 USD each), as the
    workers write them, and its gateways' consumer group; returns a client and the keys."""
    keys = Keys(name)
    client: Any = redis_sync.Redis.from_url(redis.url)
    client.xgroup_create(keys.ledger, keys.ledger_group, id="0", mkstream=True)
    add_finished_lines(client, keys, n)
    return client, keys


def add_finished_lines(client: Any, keys: Keys, n: int) -> None:
    """`n` finished lines (team-a, 0.25 USD each) on the ledger stream, as the workers write
    them."""
    line = {"t": "team-a", "r": "default", "m": "gpt-4o-mini", "p": 10, "c": 5, "u": 0.25}
    for _ in range(n):
        client.xadd(keys.ledger, {**line, "s": 0.25, "ok": "1", "lv": "batch"})


def gateway(config: dict[str, Any] | GatewayConfig) -> TestClient:
    """A gateway app on `config` (parsed if it is not yet), in a test client."""
    parsed = config if isinstance(config, GatewayConfig) else parse_config(config)
    return TestClient(create_app(parsed))


def admin_usage(gw: TestClient) -> Any:
    """The gateway's usage report, as the admin reads it."""
    return gw.get("/v1/thrifty/usage", headers={"authorization": "Bearer sk-local-admin"}).json()


def with_daily_budgets(config: dict[str, Any]) -> None:
    """Gives every tenant of `config` a daily hard limit of 100 USD (so spend is charged)."""
    config["tenants"] = [
        {**t, "budget": {"period": "day", "hardLimitUsd": 100.0}} for t in config["tenants"]
    ]


def new_record() -> BatchRecord:
    return BatchRecord(id=new_id("batch"), endpoint="/v1/chat/completions", tenant="t")


async def create_batch(queue: RedisQueue, config: GatewayConfig, n: int) -> BatchRecord:
    """A batch of `n` lines for `config`'s first route, created in `queue`."""
    record = new_record()
    await queue.create(record, lines_for(record.id, n, model=config.routes[0].name))
    return record


async def read_one_line(queue: RedisQueue) -> tuple[str, Line]:
    """One line queued (groups created first) and read by `worker-a`: its entry id and line."""
    await queue.ensure_groups()
    (line,) = lines_for("batch_x", 1)
    await queue.redis.xadd(queue.keys.stream, line.fields())
    ((entry_id, _),) = await queue.read("worker-a", 10, 100)
    return entry_id, line


@contextlib.contextmanager
def simulator_at(tmp_path: Path, *args: str) -> Iterator[Simulator]:
    """A simulator of its own (started with `args`), stopped when the block ends."""
    sim = start_simulator(tmp_path / "sim", *args)
    try:
        yield sim
    finally:
        sim.stop()


async def test_small_batch_is_created_in_one_step(redis: RedisServer) -> None:
    queue = queue_for(redis, "atomic")
    try:
        record = new_record()
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


async def test_batch_list_reads_only_the_tenants_own_index(redis: RedisServer) -> None:
    """A tenant's list pages through its own batches (not every tenant's records), and another
    tenant's batch id as the cursor reads as no cursor: it told where that batch sat among
    the tenant's own (and so that the id exists)."""
    queue = queue_for(redis, "listing")
    try:
        made: dict[str, list[str]] = {"a": [], "b": []}
        now = int(time.time())
        for i, tenant in enumerate(["a", "b", "a", "b", "a"]):
            record = BatchRecord(
                id=new_id("batch"),
                endpoint="/v1/chat/completions",
                tenant=tenant,
                created_at=now + i,
            )
            await queue.create(record, lines_for(record.id, 1))
            made[tenant].append(record.id)
        newest_a = made["a"][::-1]
        assert ([r.id for r in (await queue.list_batches("a", None, 10))[0]]) == newest_a
        page, more = await queue.list_batches("a", None, 2)
        assert [r.id for r in page] == newest_a[:2] and more
        page, more = await queue.list_batches("a", page[-1].id, 2)
        assert [r.id for r in page] == newest_a[2:] and not more
        # b's oldest batch sits after a's two newest: as a's cursor it reads as none
        page, _ = await queue.list_batches("a", made["b"][0], 10)
        assert [r.id for r in page] == newest_a
        assert await queue.redis.exists(queue.keys.index) == 0
        # an expired record leaves the index when a list meets it
        await queue.redis.delete(queue.keys.batch(made["a"][0]))
        page, _ = await queue.list_batches("a", None, 10)
        assert [r.id for r in page] == newest_a[:2]
        assert await queue.redis.zcard(queue.keys.tenant_index("a")) == 2
    finally:
        await queue.aclose()


async def test_batch_list_pages_past_expired_records(redis: RedisServer) -> None:
    """Expired records among live ones (records expire 30 days after their batch ends; an
    evicting Redis takes them any time): every live batch is listed, none skipped (removing
    the expired ones during the walk shifted the ranks it read: 2 of 6 were never shown,
    `has_more` false), and entries of batches older than any record are dropped at create."""
    queue = queue_for(redis, f"expired-{time.time_ns()}")
    try:
        ids = []
        now = int(time.time())
        for i in range(6):
            record = BatchRecord(
                id=new_id("batch"), endpoint="/v1/chat/completions", tenant="a", created_at=now + i
            )
            await queue.create(record, lines_for(record.id, 1))
            ids.append(record.id)
        newest = ids[::-1]
        for gone in newest[1:3]:
            await queue.redis.delete(queue.keys.batch(gone))
        live = [newest[0], *newest[3:]]
        seen: list[str] = []
        cursor = None
        while True:
            page, more = await queue.list_batches("a", cursor, 2)
            seen += [r.id for r in page]
            if not more:
                break
            cursor = page[-1].id
        assert seen == live
        # a tenant that never lists: entries older than any record are dropped at create
        index = queue.keys.tenant_index("a")
        await queue.redis.zadd(index, {"batch_ancient": time.time() - 40 * 86400})
        record = BatchRecord(id=new_id("batch"), endpoint="/v1/chat/completions", tenant="a")
        await queue.create(record, lines_for(record.id, 1))
        assert await queue.redis.zscore(index, "batch_ancient") is None
        assert await queue.redis.zscore(index, record.id) is not None
    finally:
        await queue.aclose()


async def test_batch_list_moves_the_shared_index_of_older_gateways(redis: RedisServer) -> None:
    """Batches an older gateway indexed only in the index every tenant shared are listed for
    their tenant, and the shared index is emptied."""
    queue = queue_for(redis, "oldindex")
    try:
        ids = []
        for i, tenant in enumerate(["a", "b", "a"]):
            record = BatchRecord(
                id=new_id("batch"), endpoint="/v1/chat/completions", tenant=tenant, created_at=i
            )
            await queue.create(record, lines_for(record.id, 1))
            await queue.redis.zrem(queue.keys.tenant_index(tenant), record.id)
            await queue.redis.zadd(queue.keys.index, {record.id: i})  # as written before
            ids.append(record.id)
        await queue.redis.zadd(queue.keys.index, {"batch_gone": 5})  # its record expired
        page, more = await queue.list_batches("a", None, 10)
        assert [r.id for r in page] == [ids[2], ids[0]] and not more
        assert [r.id for r in (await queue.list_batches("b", None, 10))[0]] == [ids[1]]
        assert await queue.redis.exists(queue.keys.index) == 0
    finally:
        await queue.aclose()


async def interrupted_batch(queue: RedisQueue, n: int) -> str:
    """A batch whose creation dies after the first chunk of lines (a line that cannot be
    encoded stands in for the gateway crashing)."""
    record = new_record()
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


async def test_a_batch_cancelled_while_its_creation_was_cut_short_ends_cancelled(
    redis: RedisServer, tmp_path: Path
) -> None:
    """Cancelled while validating, and its creation died: some lines were never queued, so it
    would stay `cancelling` for ever. Once stale it ends `cancelled`."""
    queue = queue_for(redis, f"cancel-interrupted-{time.time_ns()}")
    store = FilesystemStore(tmp_path / "files", 10**9)
    try:
        batch_id = await interrupted_batch(queue, CHUNK + 100)
        assert await queue.transition(batch_id, "cancelling", cancelling_at=int(time.time()))
        assert not await finalize(queue, store, batch_id, "w", stale_validating_seconds=600)
        assert await finalize(queue, store, batch_id, "w", stale_validating_seconds=0)
        done = await queue.get(batch_id)
        assert done is not None and done.status == "cancelled" and done.cancelled_at
        assert batch_id not in await queue.active()
    finally:
        await queue.aclose()


async def test_a_batch_cancelled_while_validating_but_fully_queued_is_finalized_as_usual(
    redis: RedisServer, tmp_path: Path
) -> None:
    """The cancel came while a large batch was being queued, and the queueing finished (only
    its move to in_progress was refused): not a cut-short create. Its lines are all there, so
    it waits for their results and gets its files like any cancelled batch."""
    queue = queue_for(redis, f"cancel-queued-{time.time_ns()}")
    store = FilesystemStore(tmp_path / "files", 10**9)
    try:
        record = new_record()
        await queue.create(record, lines_for(record.id, CHUNK + 5))
        assert await queue.fully_queued(record.id)
        key = queue.keys.batch(record.id)
        stored = BatchRecord.load(await queue.redis.get(key))
        cancelling = stored.model_copy(update={"status": "cancelling", "in_progress_at": None})
        await queue.redis.set(key, cancelling.store())
        assert not await finalize(queue, store, record.id, "w", stale_validating_seconds=0)
        still = await queue.get(record.id)
        assert still is not None and still.status == "cancelling"
    finally:
        await queue.aclose()


async def test_a_cancel_after_the_finalizers_read_ends_the_batch_cancelled(
    redis: RedisServer, tmp_path: Path
) -> None:
    """A cancel that lands between the finalizer's read of the batch and its move to
    finalizing: the batch ends `cancelled`, not `completed` with `cancelling_at` set."""
    queue = queue_for(redis, f"cancel-race-{time.time_ns()}")
    store = FilesystemStore(tmp_path / "files", 10**9)
    try:
        record = new_record()
        await queue.create(record, lines_for(record.id, 1))
        ((entry_id, line),) = await queue.read("w", 10, 100)
        await queue.complete(entry_id, line, Result("req-0", 200, {"x": 1}))
        lease = queue.lease

        async def cancel_then_lease(name: str, owner: str, ms: int) -> bool:
            moved = await queue.transition(record.id, "cancelling", cancelling_at=1)
            assert moved is not None
            return await lease(name, owner, ms)

        queue.lease = cancel_then_lease  # type: ignore[method-assign,assignment]
        assert await finalize(queue, store, record.id, "w")
        done = await queue.get(record.id)
        assert done is not None and done.status == "cancelled" and done.completed_at is None
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
    name = f"orphans-{time.time_ns()}"
    client, keys = finished_lines(redis, name, 3)
    # The dead gateway: read them, never acknowledged them.
    client.xreadgroup(keys.ledger_group, "gateway-gone-1", {keys.ledger: ">"}, count=10)
    monkeypatch.setattr(batch_stage, "SYNC_MIN_IDLE_MS", 200)
    time.sleep(0.3)
    with gateway(batch_config(simulator, redis, tmp_path, name)) as gw:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            usage = admin_usage(gw)
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
        entry_id, _ = await read_one_line(queue)
        await queue.save_job("job-1", {"lines": {}}, [entry_id])
        assert await queue.reclaim("worker-b", 0) == []  # inside a live job: not reclaimed
        await queue.drop_job("job-1")
        assert [e for e, _ in await queue.reclaim("worker-b", 0)] == [entry_id]
        own = await queue.read("worker-b", 10, 0, own=True)
        assert [e for e, _ in await queue.outside_jobs(own)] == [entry_id]
    finally:
        await queue.aclose()


def test_batch_spend_refused_by_a_paused_budget_store_is_charged_later(
    simulator: Simulator, redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finished batch lines reach the gateway while the budget store (the ledger's Redis)
    hangs: their spend is not dropped. The lines stay pending, come back with the next
    reclaim once Redis answers again, and are charged and recorded once."""
    name = f"spend-{time.time_ns()}"
    client, keys = finished_lines(redis, name, 3)
    monkeypatch.setattr(batch_stage, "SYNC_MIN_IDLE_MS", 200)
    monkeypatch.setattr(batch_stage, "SYNC_RECLAIM_SECONDS", 0.3)
    spend = start_redis(tmp_path / "spend")
    config = batch_config(simulator, redis, tmp_path, name)
    config["ledger"] = {"redisUrl": spend.url}
    with_daily_budgets(config)
    spend.proc.send_signal(signal.SIGSTOP)
    try:
        with gateway(config) as gw:
            deadline = time.monotonic() + 15
            while (
                time.monotonic() < deadline
                and client.xpending(keys.ledger, keys.ledger_group)["pending"] < 3
            ):
                time.sleep(0.05)
            time.sleep(1.0)  # the settle's write to the hung store times out (0.5 s)
            # read, refused by the hung store, kept pending: nothing charged or recorded yet
            assert client.xpending(keys.ledger, keys.ledger_group)["pending"] == 3
            assert admin_usage(gw)["totals"]["requests"] == 0
            spend.proc.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 15
            spent = 0.0
            while time.monotonic() < deadline:
                body = gw.get(
                    "/v1/thrifty/budgets", headers={"authorization": "Bearer sk-local-a"}
                ).json()
                spent = sum(b["spent_usd"] for b in body.get("data", []))
                if spent >= 0.75 and not client.xpending(keys.ledger, keys.ledger_group)["pending"]:
                    break
                time.sleep(0.1)
            assert spent == pytest.approx(0.75)  # charged once, not dropped nor twice
            assert client.xpending(keys.ledger, keys.ledger_group)["pending"] == 0
            assert admin_usage(gw)["totals"]["requests"] == 3
    finally:
        spend.proc.send_signal(signal.SIGCONT)
        spend.kill()
        client.close()


def test_batch_lines_are_recorded_uncharged_when_the_budget_store_stays_down(
    simulator: Simulator, redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budget store that never comes back does not hold the ledger back for good: after
    `CHARGE_TRIES` refusals the lines are recorded (uncharged) and acknowledged."""
    name = f"nospend-{time.time_ns()}"
    client, keys = finished_lines(redis, name, 1)
    monkeypatch.setattr(batch_stage, "SYNC_MIN_IDLE_MS", 100)
    monkeypatch.setattr(batch_stage, "SYNC_RECLAIM_SECONDS", 0.2)
    monkeypatch.setattr(batch_stage, "CHARGE_TRIES", 3)
    config = batch_config(simulator, redis, tmp_path, name)
    config["ledger"] = {"redisUrl": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens
    with_daily_budgets(config)
    with gateway(config) as gw:
        stage = next(s for s in gw.app.state.gateway.stages if s.name == "batch")  # type: ignore[attr-defined]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not stage.ledger.summary()["totals"]["requests"]:
            time.sleep(0.1)
        assert stage.ledger.summary()["totals"]["requests"] == 1  # recorded, uncharged
        assert client.xpending(keys.ledger, keys.ledger_group)["pending"] == 0
    client.close()


def test_a_gateway_stopped_right_after_its_start_shuts_down(
    simulator: Simulator, redis: RedisServer, tmp_path: Path
) -> None:
    """A pod stopped just after it started (a quick rollout, a crash loop): the ledger sync's
    first Redis read is in flight. Shutdown stops it between two reads and finishes; it used
    to cancel that read, which redis-py could leave waiting for ever."""
    config = parse_config(batch_config(simulator, redis, tmp_path, f"quick-{time.time_ns()}"))

    def start_and_stop() -> None:
        for _ in range(3):
            with gateway(config):
                pass

    runner = threading.Thread(target=start_and_stop, daemon=True)  # a hang must not block exit
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive(), "shutdown hung"


def test_ledger_lines_reach_the_shared_ledger_before_they_are_acknowledged(
    simulator: Simulator, redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared ledger writes a moment after a record; a line acknowledged before that write
    is lost if the gateway dies in between (nobody reads it again). So at every XACK of ledger
    lines nothing of them is still waiting in memory."""
    name = f"flushed-{time.time_ns()}"
    client, keys = finished_lines(redis, name, 0)
    config = batch_config(simulator, redis, tmp_path, name)
    config["ledger"] = {"redisUrl": redis.url}
    pending_at_ack: list[int] = []
    acked = 0
    with gateway(config) as gw:
        state = gw.app.state.gateway  # type: ignore[attr-defined]
        stage = next(s for s in state.stages if isinstance(s, BatchStage))
        assert stage.runtime.queue is not None
        queue_redis = stage.runtime.queue.redis
        xack = queue_redis.xack

        async def watched(stream: Any, group: Any, *ids: Any) -> Any:
            nonlocal acked
            pending_at_ack.append(state.ledger.shared.pending)
            acked += len(ids)
            return await xack(stream, group, *ids)

        monkeypatch.setattr(queue_redis, "xack", watched)
        # as the workers write them, now that the gateway watches
        add_finished_lines(client, keys, 3)
        deadline = time.monotonic() + 10
        while acked < 3:
            assert time.monotonic() < deadline, acked
            time.sleep(0.05)
    assert pending_at_ack and all(pending == 0 for pending in pending_at_ack)
    client.close()


async def test_lines_waiting_in_a_live_job_are_not_claimed_nor_counted_as_deliveries(
    redis: RedisServer,
) -> None:
    """Sweeps find a line inside a provider job idle for as long as the job runs: they leave
    it, and its delivery count stays as it was (XAUTOCLAIM counted every sweep as a delivery,
    and after a few the line was dead-lettered as a poison line, its paid answer discarded)."""
    queue = queue_for(redis, f"waiting-{time.time_ns()}")
    try:
        entry_id, _ = await read_one_line(queue)
        await queue.save_job("job-1", {"lines": {}}, [entry_id])
        for _ in range(queue.max_attempts + 5):
            assert await queue.reclaim("worker-b", 0) == []
        (pending,) = await queue.redis.xpending_range(
            queue.keys.stream, queue.keys.group, min="-", max="+", count=10
        )
        assert pending["times_delivered"] == 1 and pending["consumer"] == b"worker-a"
    finally:
        await queue.aclose()


async def test_restarts_never_dead_letter_lines_waiting_in_a_live_job(
    redis: RedisServer,
) -> None:
    """A worker restarted in place (same consumer name) re-reads what it holds, which counts a
    delivery each time; the lines inside a provider job still running are not its to run, and
    five restarts during a long job must not dead-letter them (their paid answers would be
    dropped when the job ends). A line outside any job is, past the limit."""
    queue = queue_for(redis, f"restarts-{time.time_ns()}")
    try:
        await queue.ensure_groups()
        waiting, crashing = lines_for("batch_x", 2)
        await queue.redis.xadd(queue.keys.stream, waiting.fields())
        await queue.redis.xadd(queue.keys.stream, crashing.fields())
        (in_job, _), (alone, _) = await queue.read("pod", 10, 100)
        await queue.save_job("job-1", {"batches": []}, [in_job])
        for _ in range(queue.max_attempts + 3):
            assert [e for e, _ in await queue.read_own("pod")] in ([alone], [])
        assert await queue.read_own("pod") == []
        (dead,) = await queue.dead_letters()
        assert dead["c"] == crashing.custom_id
        assert await queue.result("batch_x", waiting.custom_id) is None
    finally:
        await queue.aclose()


async def test_a_line_is_queued_again_once_however_often_its_failure_is_replayed(
    redis: RedisServer,
) -> None:
    """A poll replayed after a crash (or by a second worker) resubmits the same failed lines:
    the next attempt is queued only while the old entry is pending."""
    queue = queue_for(redis, f"resubmit-{time.time_ns()}")
    try:
        entry_id, line = await read_one_line(queue)
        assert await queue.resubmit(entry_id, line, direct=True)
        assert not await queue.resubmit(entry_id, line, direct=True)
        entries = await queue.redis.xrange(queue.keys.stream)
        assert len(entries) == 1  # the next attempt only (the old entry is deleted)
        again = Line.from_fields(entries[0][1])
        assert again.attempt == 2 and again.direct and again.custom_id == line.custom_id
    finally:
        await queue.aclose()


async def test_a_provider_job_whose_create_timed_out_is_found_not_created_again(
    tmp_path: Path,
) -> None:
    """The provider took the job but answered after the client's timeout: the SDK's retries
    would have created two more (billed) jobs. The create is not retried; the job is found by
    the marker in its metadata."""
    slow = start_simulator(tmp_path / "sim", "--batch-create-ms", "1500")
    batches = OpenAIBatches(
        [ProviderConfig(name="sim", base_url=f"{slow.url}/v1")], {"sim": None}, timeout=1.0
    )
    try:
        line = b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{}}\n'
        job_id = await batches.submit(
            Target("sim", "gpt-4o-mini"), "/v1/chat/completions", line, "24h"
        )
        stats = httpx.get(f"{slow.url}/sim/batches/stats").json()
        assert stats["batches_created"] == 1
        assert job_id.startswith("batch_sim")
    finally:
        await batches.aclose()
        slow.stop()


def queue_of(config: GatewayConfig, redis: RedisServer) -> RedisQueue:
    """A client of `config`'s batch queue."""
    assert config.batch is not None
    return queue_for(redis, config.batch.name)


async def results_of(config: GatewayConfig, redis: RedisServer, batch_id: str) -> dict[str, Result]:
    queue = queue_of(config, redis)
    try:
        return await queue.results(batch_id)
    finally:
        await queue.aclose()


async def wait_for_status(
    queue: RedisQueue, batch_id: str, deadline: float, *statuses: str
) -> BatchRecord | None:
    """Polls the batch until it is in one of `statuses` (or gone), failing past `deadline`
    (a `time.monotonic()` value) with the status it was stuck in; returns it as last read."""
    while (got := await queue.get(batch_id)) is not None and got.status not in statuses:
        assert time.monotonic() < deadline, got.status
        await asyncio.sleep(0.05)
    return got


@contextlib.asynccontextmanager
async def running(worker: BatchWorker, upstream: HttpUpstream) -> AsyncIterator[None]:
    """`worker` runs for the block; then it is stopped, and its queue, its provider client and
    `upstream` are closed."""
    task = asyncio.create_task(worker.run())
    try:
        yield
    finally:
        worker.stop()
        await task
        await worker.queue.aclose()
        await worker.batches.aclose()
        await upstream.aclose()


def direct_worker(
    config: GatewayConfig,
    redis: RedisServer,
    tmp_path: Path,
    consumer: str,
    idle: float = 120,
    **options: Any,
) -> tuple[BatchWorker, HttpUpstream]:
    """A direct-mode worker as `thrifty batch-worker` builds it, with its upstream client."""
    assert config.batch is not None
    keys = ProviderKeys(config.providers)
    upstream = HttpUpstream(config.providers, keys)
    worker = BatchWorker(
        config,
        queue_for(redis, config.batch.name),
        FilesystemStore(str(tmp_path), 10**9),
        upstream,
        FollowingBatches(config.providers, keys),
        WorkerOptions(consumer, reclaim_idle_seconds=idle, sweep_seconds=0.1, **options),
    )
    return worker, upstream


def offline_config(redis: RedisServer, tmp_path: Path, name: str) -> GatewayConfig:
    """A direct-mode queue whose provider is never called (nothing listens there)."""
    cfg = local_config("http://127.0.0.1:9")
    cfg["batch"] = {
        "name": f"{name}-{time.time_ns()}",
        "redisUrl": redis.url,
        "filesDir": str(tmp_path),
        "spec": {"mode": "direct"},
    }
    return parse_config(cfg)


def direct_config(simulator: Simulator, redis: RedisServer, tmp_path: Path) -> GatewayConfig:
    cfg = local_config(simulator.url)
    cfg["batch"] = {
        "name": f"direct-{time.time_ns()}",
        "redisUrl": redis.url,
        "filesDir": str(tmp_path),
        "spec": {"mode": "direct", "direct": {"concurrency": 1}, "retries": {"maxAttempts": 3}},
    }
    return parse_config(cfg)


async def run_until_completed(
    config: GatewayConfig, redis: RedisServer, workers: list[BatchWorker], record: BatchRecord
) -> BatchRecord:
    queue = queue_of(config, redis)
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        got = await wait_for_status(queue, record.id, time.monotonic() + 30, "completed")
        assert got is not None
        return got
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.gather(*tasks)
        await queue.aclose()
        for worker in workers:
            await worker.queue.aclose()
            await worker.batches.aclose()


@pytest.mark.parametrize(("workers", "latency_ms"), [(2, 1000), (1, 1500)])
async def test_lines_a_live_worker_holds_are_neither_run_twice_nor_dead_lettered(
    redis: RedisServer, tmp_path: Path, workers: int, latency_ms: int
) -> None:
    """A worker reads more lines than it runs at once; those waiting for their turn (or for a
    long call) go idle past the reclaim time. They were taken over by another worker's sweep
    and called upstream twice (billed twice), and with one worker its own sweeps counted them
    as crashing deliveries until it dead-lettered lines it had paid for. The worker now marks
    what it holds as just delivered."""
    with simulator_at(tmp_path, "--latency-ms", str(latency_ms)) as slow:
        config = direct_config(slow, redis, tmp_path)
        built = [direct_worker(config, redis, tmp_path, f"w{i}", 0.6) for i in range(workers)]
        queue = queue_of(config, redis)
        record = await create_batch(queue, config, 3)
        done = await run_until_completed(config, redis, [w for w, _ in built], record)
        assert done.request_counts.completed == 3 and done.request_counts.failed == 0
        assert await queue.dead_letters() == []
        assert slow.stats()["requests"] == {"gpt-4o-mini": 3}  # each line called once
        await queue.aclose()
        for _, upstream in built:
            await upstream.aclose()


async def test_a_restarted_worker_dead_letters_its_own_poison_lines(
    simulator: Simulator, redis: RedisServer, tmp_path: Path
) -> None:
    """A line that kills its worker (out of memory) crash-looped a one-replica worker forever:
    the restarted pod (same consumer name: hostname and pid 1) ran its own pending lines at
    start without the delivery count check reclaims apply."""
    config = direct_config(simulator, redis, tmp_path)
    queue = queue_of(config, redis)
    record = new_record()
    poison, ok = lines_for(record.id, 2, model=config.routes[0].name)
    await queue.create(record, [poison, ok])
    await queue.read("pod", 1, 100)  # the poison line
    for _ in range(queue.max_attempts + 2):  # each restart re-reads what it held, then dies
        await queue.read("pod", 10, 0, own=True)
    await queue.read("pod", 1, 100)  # the other line, held when the pod died, delivered once
    worker, upstream = direct_worker(config, redis, tmp_path, "pod")
    try:
        done = await run_until_completed(config, redis, [worker], record)
        assert done.request_counts.completed == 1 and done.request_counts.failed == 1
        results = await queue.results(record.id)
        assert results[ok.custom_id].status_code == 200
        assert results[poison.custom_id].error_code == "poison_line"
        (dead,) = await queue.dead_letters()
        assert dead["c"] == poison.custom_id
    finally:
        await upstream.aclose()
        await queue.aclose()


# -- provider jobs that fail as a whole, their backoff, and the provider's files -------------


def provider_config(
    simulator: Simulator,
    redis: RedisServer,
    tmp_path: Path,
    max_attempts: int = 2,
    on_failure: str = "resubmit",
) -> GatewayConfig:
    cfg = local_config(simulator.url)
    cfg["batch"] = {
        "name": f"jobs-{time.time_ns()}",
        "redisUrl": redis.url,
        "filesDir": str(tmp_path),
        "spec": {
            "mode": "provider",
            "flushWindowSeconds": 1,
            "pollIntervalSeconds": 1,
            "retries": {"maxAttempts": max_attempts, "onFailure": on_failure},
        },
    }
    return parse_config(cfg)


def provider_worker(
    config: GatewayConfig, redis: RedisServer, tmp_path: Path, **options: Any
) -> tuple[BatchWorker, HttpUpstream, list[float]]:
    """A provider-mode worker as `thrifty batch-worker` builds it (backoffs shortened by
    `options`), its upstream client and the times of its job submissions."""
    assert config.batch is not None
    keys = ProviderKeys(config.providers)
    upstream = HttpUpstream(config.providers, keys)
    batches = FollowingBatches(config.providers, keys)
    submits: list[float] = []
    submit = batches.submit

    async def recorded(*args: Any, **kwargs: Any) -> str:
        submits.append(time.monotonic())
        return await submit(*args, **kwargs)

    batches.submit = recorded  # type: ignore[method-assign]
    attempts = config.batch.spec.retries.max_attempts
    queue = RedisQueue.from_url(
        redis.url, config.batch.name, max_attempts=attempts, dead_letter=True, password=None
    )
    worker = BatchWorker(
        config,
        queue,
        FilesystemStore(str(tmp_path), 10**9),
        upstream,
        batches,
        WorkerOptions("w1", sweep_seconds=0.1, file_delete_retry_seconds=0.5, **options),
    )
    return worker, upstream, submits


async def run_until_terminal(
    config: GatewayConfig,
    redis: RedisServer,
    worker: BatchWorker,
    record: BatchRecord,
    timeout: float = 60,
) -> BatchRecord:
    queue = queue_of(config, redis)
    task = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + timeout
        got = await wait_for_status(
            queue, record.id, deadline, "completed", "failed", "expired", "cancelled"
        )
        assert got is not None
        return got
    finally:
        worker.stop()
        await task
        await queue.aclose()
        await worker.queue.aclose()
        await worker.batches.aclose()


def sim_faults(sim: Simulator, **faults: Any) -> None:
    httpx.post(f"{sim.url}/sim/batches/faults", json=faults).raise_for_status()


def sim_stats(sim: Simulator) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{sim.url}/sim/batches/stats").json()
    return data


async def new_batch(config: GatewayConfig, redis: RedisServer, n: int) -> BatchRecord:
    queue = queue_of(config, redis)
    try:
        return await create_batch(queue, config, n)
    finally:
        await queue.aclose()


async def run_provider_batch(
    config: GatewayConfig, redis: RedisServer, tmp_path: Path, n: int, **options: Any
) -> tuple[BatchRecord, list[float]]:
    """A new batch of `n` lines run by a provider-mode worker (`options` as in
    `provider_worker`) until it ends: the batch as it ended and the times of the submits."""
    record = await new_batch(config, redis, n)
    worker, upstream, submits = provider_worker(config, redis, tmp_path, **options)
    done = await run_until_terminal(config, redis, worker, record)
    await upstream.aclose()
    return done, submits


async def assert_no_files_to_delete(config: GatewayConfig, redis: RedisServer) -> None:
    queue = queue_of(config, redis)
    assert await queue.files_to_delete() == {}
    await queue.aclose()


async def test_a_job_refused_for_the_enqueued_token_quota_waits_without_burning_attempts(
    redis: RedisServer, tmp_path: Path
) -> None:
    """OpenAI fails a job as a whole (`token_limit_exceeded`, no output or error file) while the
    organization's enqueued tokens are over its quota. Each line was requeued at once and
    counted an attempt: every attempt burnt in minutes, then dead-lettered `missing_result`.
    Now the lines wait, doubling, without an attempt counted, and complete once it frees."""
    with simulator_at(tmp_path, "--batch-speedup", "20") as sim:
        sim_faults(sim, fail_next=3, fail_code="token_limit_exceeded", fail_message="quota")
        config = provider_config(sim, redis, tmp_path, max_attempts=2)
        done, submits = await run_provider_batch(
            config, redis, tmp_path, 3, quota_backoff_seconds=0.5, quota_backoff_max_seconds=1.0
        )
        assert done.status == "completed", done
        assert done.request_counts.completed == 3 and done.request_counts.failed == 0
        queue = queue_of(config, redis)
        assert await queue.dead_letters() == []
        await queue.aclose()
        stats = sim_stats(sim)
        assert stats["batches_failed"] == 3 and stats["batches_created"] == 4
        gaps = [b - a for a, b in zip(submits, submits[1:], strict=False)]
        assert len(gaps) == 3 and all(g >= 0.4 for g in gaps), gaps  # backed off each time


async def test_a_job_the_provider_fails_gives_its_reason_and_backs_off(
    redis: RedisServer, tmp_path: Path
) -> None:
    """A job failed as a whole for another reason: the lines' errors carry the provider's code
    and message (they said only `missing_result` / "provider job failed"), and the next
    attempt waits its backoff instead of being submitted at once."""
    with simulator_at(tmp_path, "--batch-speedup", "20") as sim:
        sim_faults(sim, fail_next=5, fail_code="invalid_request", fail_message="Bad input file.")
        config = provider_config(sim, redis, tmp_path, max_attempts=2)
        done, submits = await run_provider_batch(
            config, redis, tmp_path, 2, retry_backoff_seconds=3.0, retry_backoff_max_seconds=3.0
        )
        assert done.request_counts.failed == 2
        for result in (await results_of(config, redis, done.id)).values():
            assert result.error_code == "invalid_request"
            assert result.error_message is not None and "Bad input file." in result.error_message
        # a job, its poll and the flush window (under 3 s, all the gap was), and 2.4-3 s of backoff
        assert len(submits) == 2 and submits[1] - submits[0] >= 3.8, submits


async def test_a_job_failed_for_one_line_fails_that_line_and_reruns_the_others(
    redis: RedisServer, tmp_path: Path
) -> None:
    """The provider names the input line it refused: that line fails with its error; the
    others (the job failed for it) run again without an attempt counted."""
    with simulator_at(tmp_path, "--batch-speedup", "20") as sim:
        sim_faults(sim, fail_next=1, fail_code="invalid_value", fail_message="Bad.", fail_line=2)
        config = provider_config(sim, redis, tmp_path, max_attempts=1)
        done, _ = await run_provider_batch(config, redis, tmp_path, 3)
        results = await results_of(config, redis, done.id)
        failed = {k: v.error_code for k, v in results.items() if not v.ok}
        assert len(failed) == 1 and set(failed.values()) == {"invalid_value"}
        assert done.request_counts.completed == 2


async def test_a_dead_workers_lines_are_taken_over_while_lines_back_off(
    redis: RedisServer, tmp_path: Path
) -> None:
    """While a worker held as many lines backing off as it may, it reclaimed nothing, and its
    reader refilled the room as soon as lines woke: a replaced pod's lines (another consumer
    name) waited for hours behind a quota episode. The reader now leaves a headroom that
    reclaims fill."""
    with simulator_at(tmp_path, "--batch-speedup", "20") as sim:
        sim_faults(sim, enqueued_token_limit=1)  # every job is refused for the quota
        config = provider_config(sim, redis, tmp_path, max_attempts=1)
        await new_batch(config, redis, 24)
        queue = queue_of(config, redis)
        keys = queue.keys
        worker, upstream, _ = provider_worker(
            config,
            redis,
            tmp_path,
            quota_backoff_seconds=60.0,  # nothing it holds wakes during the test
            quota_backoff_max_seconds=60.0,
            max_delayed_lines=6,
            reclaim_idle_seconds=1.0,
        )
        try:
            async with running(worker, upstream):
                started = time.monotonic()
                while len(worker._delayed) < 3:  # refused for the quota: backing off, held
                    assert time.monotonic() - started < 8
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)
                # Three of the lines still in the stream are read by a pod that is then gone.
                assert len(await queue.read("replaced-pod", 3, 100)) == 3
                while await queue.redis.xpending_range(
                    keys.stream, keys.group, min="-", max="+", count=10, consumername="replaced-pod"
                ):
                    assert time.monotonic() - started < 8, (
                        "the gone pod's lines were not taken over"
                    )
                    assert len(worker._delayed) <= 6
                    await asyncio.sleep(0.05)
        finally:
            await queue.aclose()


async def test_lines_backing_off_held_in_memory_are_bounded(
    redis: RedisServer, tmp_path: Path
) -> None:
    """Every line backing off was held in the worker's memory (about 2.4 KB each) and the
    reader kept reading: a quota staying full for hours held the whole backlog, until the pod
    was killed for memory. At most `max_delayed_lines` are held now, the rest wait unread in
    the stream; the held ones are kept alive (not reclaimed) and all complete once the
    enqueued-token quota frees."""
    with simulator_at(tmp_path, "--batch-speedup", "20") as sim:
        sim_faults(sim, enqueued_token_limit=1)  # every job passes it
        config = provider_config(sim, redis, tmp_path, max_attempts=1)
        record = await new_batch(config, redis, 30)
        worker, upstream, submits = provider_worker(
            config,
            redis,
            tmp_path,
            quota_backoff_seconds=0.5,
            quota_backoff_max_seconds=1.0,
            max_delayed_lines=5,
            reclaim_idle_seconds=1.0,
        )
        queue = queue_of(config, redis)
        keys = queue.keys
        most = unread_at_most = 0
        async with running(worker, upstream):
            started = time.monotonic()
            while time.monotonic() - started < 6:
                most = max(most, len(worker._delayed))
                pending = (await queue.redis.xpending(keys.stream, keys.group))["pending"]
                unread = await queue.redis.xlen(keys.stream) - pending
                if len(worker._delayed) >= 3:  # all the reader takes (5 less a headroom of 2)
                    unread_at_most = max(unread_at_most, unread)
                assert await queue.reclaim("w2", 1000) == []  # the held lines kept alive
                await asyncio.sleep(0.05)
            assert 1 <= most <= 5
            assert unread_at_most >= 20  # the rest left in the stream meanwhile
            assert sim_stats(sim)["batches_failed"] >= 2  # refused for the quota, again
            sim_faults(sim, enqueued_token_limit=0)  # the quota frees
            while (got := await queue.get(record.id)) is not None and got.status != "completed":
                assert time.monotonic() - started < 60, got.status
                most = max(most, len(worker._delayed))
                await asyncio.sleep(0.05)
        assert most <= 5
        assert got is not None
        assert got.request_counts.completed == 30 and got.request_counts.failed == 0
        assert await queue.dead_letters() == []
        assert len(submits) >= 3
        await queue.aclose()


async def test_a_cancel_answers_lines_backing_off_within_seconds(
    redis: RedisServer, tmp_path: Path
) -> None:
    """A line backing off was looked at again only when it woke: cancelling its batch took up
    to the whole backoff (15-30 min) to end it. The sweeper answers such lines now."""
    config = offline_config(redis, tmp_path, "cancel-delayed")
    queue = queue_of(config, redis)
    record = new_record()
    (line,) = lines_for(record.id, 1, model=config.routes[0].name)
    later = dataclasses.replace(line, not_before=time.time() + 3600)
    await queue.create(record, [later])
    worker, upstream = direct_worker(config, redis, tmp_path, "w1")
    async with running(worker, upstream):
        deadline = time.monotonic() + 10
        while not worker._delayed:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert await queue.transition(record.id, "cancelling", cancelling_at=int(time.time()))
        await wait_for_status(queue, record.id, time.monotonic() + 5, "cancelled")
    results = await queue.results(record.id)
    assert [r.error_code for r in results.values()] == ["batch_cancelled"]
    assert worker._delayed == [] and not worker._held
    await queue.aclose()


@pytest.mark.parametrize(
    "fault",
    [
        {"fail_code": "token_limit_exceeded", "fail_message": "quota"},
        {"fail_code": "invalid_value", "fail_message": "Bad.", "fail_line": 2},
    ],
    ids=["quota", "one-line"],
)
async def test_with_on_failure_direct_quota_waits_and_uncounted_reruns_stay_batched(
    redis: RedisServer, tmp_path: Path, fault: dict[str, Any]
) -> None:
    """`retries.onFailure: direct` sent every retried line direct: a quota refusal sent the
    whole job direct at full price (an attempt counted), and a job failed for one named line
    sent the others direct too. Only a line's own counted failure goes direct now."""
    with simulator_at(tmp_path, "--batch-speedup", "20") as sim:
        sim_faults(sim, fail_next=1, **fault)
        config = provider_config(sim, redis, tmp_path, max_attempts=2, on_failure="direct")
        assert config.batch is not None and config.batch.spec.retries.on_failure == "direct"
        done, submits = await run_provider_batch(
            config, redis, tmp_path, 3, quota_backoff_seconds=0.3, quota_backoff_max_seconds=0.5
        )
        assert sim.stats()["requests"] == {}  # nothing ran direct
        assert len(submits) == 2  # the rest went in a second provider job
        results = await results_of(config, redis, done.id)
        failed = sorted(r.error_code or "" for r in results.values() if not r.ok)
        assert failed == ([] if "fail_line" not in fault else ["invalid_value"])
        assert done.request_counts.completed == 3 - len(failed)


async def test_lines_waiting_out_a_quota_end_batch_expired_with_the_window(
    redis: RedisServer, tmp_path: Path
) -> None:
    """A quota that never frees: the lines, uncounted, wait no longer than the batch's
    completion window, then end `batch_expired` (the batch `expired`)."""
    with simulator_at(tmp_path, "--batch-speedup", "20") as sim:
        sim_faults(sim, fail_next=1000, fail_code="token_limit_exceeded")
        config = provider_config(sim, redis, tmp_path, max_attempts=1)
        record = await new_batch(config, redis, 2)
        queue = queue_of(config, redis)
        stored = await queue.get(record.id)
        assert stored is not None
        key = queue.keys.batch(record.id)
        await queue.redis.set(
            key, stored.model_copy(update={"expires_at": int(time.time()) + 3}).store()
        )
        worker, upstream, _ = provider_worker(
            config, redis, tmp_path, quota_backoff_seconds=60, quota_backoff_max_seconds=600
        )
        started = time.monotonic()
        done = await run_until_terminal(config, redis, worker, record, timeout=30)
        await upstream.aclose()
        assert time.monotonic() - started < 15  # not the minute of backoff
        assert done.status == "expired"
        results = await queue.results(record.id)
        assert {r.error_code for r in results.values()} == {"batch_expired"}
        await queue.aclose()


async def test_a_failed_submit_backs_off_before_the_next_attempt(
    redis: RedisServer, tmp_path: Path
) -> None:
    """The provider refuses the job (here its key): the lines' next attempt waits its backoff
    (they were submitted again at once, every attempt burnt in seconds)."""
    with simulator_at(tmp_path, "--api-key", "sk-right", "--batch-speedup", "20") as sim:
        config = provider_config(sim, redis, tmp_path, max_attempts=2)
        done, submits = await run_provider_batch(
            config, redis, tmp_path, 1, retry_backoff_seconds=1.5, retry_backoff_max_seconds=2.0
        )
        assert done.request_counts.failed == 1
        # the flush window (1 s, all the gap was) and 1.2-1.5 s of backoff
        assert len(submits) == 2 and submits[1] - submits[0] >= 2.0, submits


async def test_the_provider_files_of_a_finished_job_are_deleted(
    redis: RedisServer, tmp_path: Path
) -> None:
    """The job's input upload and its output and error files stayed at the provider for ever
    (every tenant's prompts and answers, against the storage quota): once the lines' results
    are stored they are deleted, a failed job's input too."""
    with simulator_at(tmp_path, "--batch-speedup", "20") as sim:
        # The first job fails as a whole, every line of the second fails (an error file, rates
        # below 1 roll per job id: a run could get no error file), the third answers them all.
        sim_faults(sim, fail_next=1, fail_code="invalid_request", fail_rate=1.0, fail_jobs=2)
        config = provider_config(sim, redis, tmp_path, max_attempts=4)
        done, submits = await run_provider_batch(
            config, redis, tmp_path, 10, retry_backoff_seconds=0.2, retry_backoff_max_seconds=0.5
        )
        assert done.status == "completed"
        assert done.request_counts.completed == 10
        stats = sim_stats(sim)
        assert stats["files_uploaded"] == len(submits) == 3  # failed, all lines failed, the rest
        assert stats["files"] == 0, stats  # inputs, outputs and error files all deleted
        await assert_no_files_to_delete(config, redis)


async def test_the_input_file_of_a_job_given_up_is_deleted(
    redis: RedisServer, tmp_path: Path
) -> None:
    """A job given up (here: the provider no longer knows it) was forgotten without its files:
    its input upload (every tenant's prompts) stayed at the provider. The input file id is
    recorded at submit and deleted when the job is given up."""
    with simulator_at(tmp_path, "--batch-speedup", "20") as sim:
        sim_faults(sim, forget_next=1)
        config = provider_config(sim, redis, tmp_path, max_attempts=3)
        done, submits = await run_provider_batch(
            config, redis, tmp_path, 2, job_lost_after_failures=2
        )
        assert done.status == "completed" and done.request_counts.completed == 2
        stats = sim_stats(sim)
        assert stats["batches_forgotten"] == 1 and stats["files_uploaded"] == len(submits) == 2
        assert stats["files"] == 0, stats  # the given-up job's input too
        await assert_no_files_to_delete(config, redis)


async def test_a_refused_create_whose_upload_delete_failed_leaves_no_upload(
    redis: RedisServer, tmp_path: Path
) -> None:
    """The provider refuses the create (400) after the upload, and the submit's own delete of
    the upload fails too: the upload (every tenant's prompts) was left at the provider, only
    logged. It is found by its marker, recorded and deleted once deletes work again; the
    lines go into a new job."""
    with simulator_at(tmp_path) as sim:
        sim_faults(sim, refuse_next=1, delete_status=500)
        config = provider_config(sim, redis, tmp_path)
        worker, upstream, submits = provider_worker(
            config, redis, tmp_path, retry_backoff_seconds=0.5
        )
        record = await new_batch(config, redis, 3)
        queue = queue_of(config, redis)
        try:
            async with running(worker, upstream):
                done = await wait_for_status(queue, record.id, time.monotonic() + 60, "completed")
                assert done is not None and done.request_counts.completed == 3
                sim_faults(sim, delete_status=0)
                deadline = time.monotonic() + 60
                while await queue.pending_deletes():
                    assert time.monotonic() < deadline, "never deleted"
                    await asyncio.sleep(0.1)
        finally:
            await queue.aclose()
        # every file is gone: the jobs' and the refused job's upload (left before, its
        # delete having failed inside the submit)
        assert sim_stats(sim)["files"] == 0
        assert sim_stats(sim)["creates_refused"] == 1 and len(submits) >= 2


async def test_slow_provider_file_deletes_never_hold_up_the_heartbeat(
    redis: RedisServer, tmp_path: Path
) -> None:
    """Failed provider-file deletes were retried inside the sweeper, one after the other, each
    up to the SDK's timeout and retries: while it was busy the lines the worker held were not
    marked as delivered, and another worker's reclaim ran them a second time (billed twice).
    Deletes now have their own loop and the heartbeat its own."""
    with simulator_at(tmp_path, "--latency-ms", "2500") as slow:
        sim_faults(slow, delete_delay=1.0, delete_status=500)
        config = direct_config(slow, redis, tmp_path)
        queue = queue_of(config, redis)
        files = [f"file-{i}" for i in range(6)]
        await queue.drop_job("job-gone", files, config.providers[0].name)
        worker, upstream = direct_worker(
            config, redis, tmp_path, "w1", 1.0, file_delete_retry_seconds=0.3
        )
        record = await create_batch(queue, config, 2)
        async with running(worker, upstream):
            started = time.monotonic()
            while time.monotonic() - started < 4.0:  # the lines are held all along
                assert await queue.reclaim("w2", 1000) == [], "another worker took a held line"
                await asyncio.sleep(0.2)
            await wait_for_status(queue, record.id, started + 30, "completed")
        assert slow.stats()["requests"] == {"gpt-4o-mini": 2}  # each line called once
        assert sim_stats(slow)["delete_calls"] >= 1  # the deletes were tried meanwhile
        pending = await queue.pending_deletes()
        assert {p.file_id for p in pending} == set(files)  # kept, to be tried again
        assert any(p.tries >= 1 for p in pending)  # those tried back off
        await queue.aclose()


class Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status


class FakeDeletes:
    """A Files API whose delete answers per file id: `f-403...` 403, `f-404...` 404, `f-500...`
    500, `f-slow...` never; others are deleted."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def delete(self, _target: Target, file_id: str) -> None:
        self.calls.append(file_id)
        for status in (403, 404, 500):
            if file_id.startswith(f"f-{status}"):
                raise Refused(status)
        if file_id.startswith("f-slow"):
            await asyncio.sleep(30)

    async def aclose(self) -> None:
        return None


async def test_failed_provider_file_deletes_back_off_and_are_given_up(
    redis: RedisServer, tmp_path: Path
) -> None:
    """Every recorded file was tried again every pass, for ever: a key without the delete
    permission (403), a provider removed from the config or a file the provider no longer
    has made the list grow without end. Now: 404 counts as deleted; 403, an unknown provider
    and a file failing for longer than the give-up time are dropped (one log line); others
    back off per file; a pass tries a bounded number of files, each under a timeout."""
    config = offline_config(redis, tmp_path, "deletes")
    assert config.batch is not None
    provider = config.providers[0].name
    worker, upstream = direct_worker(
        config,
        redis,
        tmp_path,
        "w1",
        file_delete_retry_seconds=60,
        file_delete_timeout_seconds=0.2,
        file_deletes_per_pass=100,
    )
    fake = FakeDeletes()
    worker.batches = fake  # type: ignore[assignment]
    queue = worker.queue
    try:
        await queue.drop_job("j1", ["f-403", "f-404", "f-500", "f-slow", "f-ok"], provider)
        await queue.drop_job("j2", ["f-elsewhere"], "removed-provider")
        old = PendingDelete("f-500-old", provider, time.time() - 90_000, 9, 0.0)
        await queue.redis.hset(queue.keys.provider_files, old.file_id, old.dump())
        started = time.monotonic()
        await worker._retry_deletes()
        assert time.monotonic() - started < 5  # the slow delete was cut at its timeout
        assert sorted(fake.calls) == ["f-403", "f-404", "f-500", "f-500-old", "f-ok", "f-slow"]
        left = {p.file_id: p for p in await queue.pending_deletes()}
        assert set(left) == {"f-500", "f-slow"}  # the others deleted or given up
        for pending in left.values():
            assert pending.tries == 1 and pending.next_at > time.time() + 30  # backing off
        fake.calls.clear()
        await worker._retry_deletes()
        assert fake.calls == []  # nothing due yet
        # a pass tries at most file_deletes_per_pass files
        await queue.redis.delete(queue.keys.provider_files)
        await queue.drop_job("j3", [f"f-500-{i}" for i in range(5)], provider)
        bounded, upstream2 = direct_worker(config, redis, tmp_path, "w2", file_deletes_per_pass=2)
        bounded.batches = fake  # type: ignore[assignment]
        await bounded._retry_deletes()
        assert len(fake.calls) == 2
        await bounded.queue.aclose()
        await upstream2.aclose()
    finally:
        await queue.aclose()
        await upstream.aclose()


# -- cancel -----------------------------------------------------------------------------------


async def test_a_direct_line_of_a_batch_cancelled_while_it_waited_is_not_called(
    redis: RedisServer, tmp_path: Path
) -> None:
    """Direct mode reads lines ahead of its concurrency: a line already read when its batch is
    cancelled was still called upstream (and paid for). It is now answered `batch_cancelled`
    when its turn comes, without a call."""
    with simulator_at(tmp_path, "--latency-ms", "1500") as slow:
        config = direct_config(slow, redis, tmp_path)
        worker, upstream = direct_worker(config, redis, tmp_path, "w1")
        queue = queue_of(config, redis)
        record = await create_batch(queue, config, 3)
        async with running(worker, upstream):
            deadline = time.monotonic() + 10
            while not slow.stats()["requests"]:  # the first line's call is under way
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert await queue.transition(record.id, "cancelling", cancelling_at=int(time.time()))
            await wait_for_status(queue, record.id, deadline + 20, "cancelled")
        assert slow.stats()["requests"] == {"gpt-4o-mini": 1}  # only the line already called
        results = await queue.results(record.id)
        codes = sorted(r.error_code or "ok" for r in results.values())
        assert codes == ["batch_cancelled", "batch_cancelled", "ok"]
        # Only the line called is a request in the ledger (the two unrun ones counted there
        # as errors, and inflated the tenant's error rate).
        ledger = await queue.redis.xrange(queue.keys.ledger)
        assert [fields[b"ok"] for _, fields in ledger] == [b"1"]
        await queue.aclose()


async def test_a_job_shared_with_a_cancelled_batch_runs_on_for_the_others(
    redis: RedisServer, tmp_path: Path
) -> None:
    """A provider job holds lines of two batches and one is cancelled: the job is not cancelled
    (the other batch's lines would go back to the end of the provider's queue), so the
    cancelled batch's lines already submitted run and are billed, as in-flight requests of an
    OpenAI batch cancel do. It ends `cancelled` saying so truthfully: those lines' answers in
    its output file, counted completed; the other batch completes."""
    with simulator_at(tmp_path, "--batch-speedup", "0.2") as sim:  # 2.5 s validating
        config = provider_config(sim, redis, tmp_path)
        first = await new_batch(config, redis, 3)
        second = await new_batch(config, redis, 3)
        worker, upstream, submits = provider_worker(config, redis, tmp_path)
        queue = queue_of(config, redis)
        async with running(worker, upstream):
            deadline = time.monotonic() + 30
            while not await queue.redis.hlen(queue.keys.jobs):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert await queue.transition(first.id, "cancelling", cancelling_at=int(time.time()))
            for record in (first, second):
                await wait_for_status(queue, record.id, deadline, "completed", "cancelled")
        cancelled, completed = await queue.get(first.id), await queue.get(second.id)
        assert cancelled is not None and completed is not None
        assert cancelled.status == "cancelled" and cancelled.request_counts.completed == 3
        assert completed.status == "completed" and completed.request_counts.completed == 3
        assert all(r.ok for r in (await queue.results(first.id)).values())
        stats = sim_stats(sim)
        assert len(submits) == 1 and stats["lines"] == 6  # one job, run whole, not cancelled
        await queue.aclose()


# -- provider jobs' lines kept apart from what the poller reads -------------------------------


async def test_a_poll_pass_reads_the_jobs_without_their_lines(redis: RedisServer) -> None:
    """Every worker read every job with all its lines' request bodies (the whole jobs hash,
    parsed) twice a second: 4 jobs of 50k lines stalled the event loop 1.6 s a pass. The jobs
    hash now holds only metadata; a job's lines are read when it ends."""
    queue = queue_for(redis, f"split-{time.time_ns()}")
    try:
        lines = {f"1-{i}": {"b": "batch_x", "c": f"c{i}", "d": {"p": "x" * 100}} for i in range(50)}
        job = {"provider": "p", "model": "m", "url": "/v1/chat/completions", "started": 1.0}
        await queue.save_job("job-1", {**job, "batches": ["batch_x"], "lines": lines}, list(lines))
        raw = await queue.redis.hget(queue.keys.jobs, "job-1")
        assert b"lines" not in raw and len(raw) < 200
        assert await queue.jobs() == {"job-1": {**job, "batches": ["batch_x"]}}
        assert list((await queue.job_lines("job-1")).items()) == list(lines.items())  # in order
        await queue.drop_job("job-1")
        assert await queue.job_lines("job-1") == {}
        assert not await queue.redis.exists(queue.keys.job_lines("job-1"))
    finally:
        await queue.aclose()


async def test_a_job_recorded_whole_by_an_older_worker_is_still_polled_to_its_end(
    redis: RedisServer, tmp_path: Path
) -> None:
    """After an upgrade, jobs an older worker recorded (lines inside the job's hash value) are
    moved to the split form at the first poll pass and finish as usual."""
    with simulator_at(tmp_path, "--batch-speedup", "20") as sim:
        config = provider_config(sim, redis, tmp_path)
        record = await new_batch(config, redis, 3)
        queue = queue_of(config, redis)
        entries = await queue.read("older-worker", 10, 100)
        assert len(entries) == 3
        target = config.routes[0].targets[0]
        tgt = Target(target.provider, target.model)
        data = b"".join(job_line(eid, line, tgt) + b"\n" for eid, line in entries)
        old = FollowingBatches(config.providers, ProviderKeys(config.providers))
        job_id = await old.submit(tgt, "/v1/chat/completions", data, "24h")
        await old.aclose()
        whole = {
            "provider": target.provider,
            "model": target.model,
            "url": "/v1/chat/completions",
            "started": time.time(),
            "lines": {eid: line.to_json() for eid, line in entries},
        }
        await queue.redis.hset(queue.keys.jobs, job_id, orjson.dumps(whole))
        await queue.redis.hset(queue.keys.inflight, mapping=dict.fromkeys(dict(entries), job_id))
        worker, upstream, submits = provider_worker(config, redis, tmp_path)
        done = await run_until_terminal(config, redis, worker, record)
        await upstream.aclose()
        assert done.status == "completed" and done.request_counts.completed == 3
        assert submits == []  # the older worker's job answered them
        assert await queue.redis.hlen(queue.keys.jobs) == 0
        assert not await queue.redis.exists(queue.keys.job_lines(job_id))
        await queue.aclose()


async def test_lines_an_older_worker_left_behind_are_removed(
    redis: RedisServer, tmp_path: Path
) -> None:
    """An older worker (lines inside the job record) that finishes a job a new worker split
    meanwhile drops the record only: the job's lines (`joblines:<job>`, every prompt) stayed
    in Redis for good. New workers remove lines whose job is no longer recorded."""
    config = offline_config(redis, tmp_path, "orphans")
    queue = queue_of(config, redis)
    lines = {"1-0": {"b": "batch_x", "c": "c0", "d": {"p": "x"}}}
    meta = {"provider": "p", "model": "m", "url": "/v1/chat/completions", "started": 1.0}
    for job_id in ("job-live", "job-dropped"):
        await queue.save_job(job_id, {**meta, "batches": ["batch_x"], "lines": lines}, [])
    await queue.redis.hdel(queue.keys.jobs, "job-dropped")  # the older worker's drop_job
    worker, upstream = direct_worker(config, redis, tmp_path, "w1", orphans_seconds=0.2)
    try:
        async with running(worker, upstream):
            deadline = time.monotonic() + 5
            while await queue.redis.exists(queue.keys.job_lines("job-dropped")):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert await queue.job_lines("job-live") == lines  # a recorded job keeps its lines
    finally:
        await queue.aclose()


async def test_a_creation_cut_short_does_not_hold_up_other_batches(
    redis: RedisServer, tmp_path: Path
) -> None:
    """A batch whose creation died after its first 1,000 lines stays `validating` until it is
    failed as stale (ten minutes). Its lines wait in the worker, and another tenant's batch
    queued behind them runs meanwhile. (Each waiting line was a task of its own, over the gate
    that stops reading: the other batch waited the ten minutes.) The stuck lines never run."""
    with simulator_at(tmp_path) as sim:
        config = direct_config(sim, redis, tmp_path)
        queue = queue_of(config, redis)
        stuck = await interrupted_batch(queue, CHUNK + 100)
        record = await create_batch(queue, config, 3)
        worker, upstream = direct_worker(config, redis, tmp_path, "w1")
        async with running(worker, upstream):
            done = await wait_for_status(queue, record.id, time.monotonic() + 30, "completed")
            assert done is not None and done.request_counts.completed == 3
            held = await queue.get(stuck)
            assert held is not None and held.status == "validating"
        assert sim.stats()["requests"] == {"gpt-4o-mini": 3}  # none of the stuck batch's
        await queue.aclose()


async def test_a_lease_is_kept_while_its_holder_works_and_let_go_soon_after_it_dies(
    redis: RedisServer,
) -> None:
    """Job-poll and finalize leases are short and renewed while their work runs: a poll or a
    finalization longer than the lease keeps it, and a holder that dies (here: stops renewing)
    holds the job up for one lease at most (the job lease was 300 s, and a worker killed
    mid-poll froze its job for five minutes)."""
    queue = queue_for(redis, f"lease-{time.time_ns()}")
    try:
        assert await queue.lease("job:x", "w1", 300)
        async with queue.holding("job:x", "w1", 300):
            await asyncio.sleep(1.0)  # longer than the lease
            assert not await queue.lease("job:x", "w2", 300)
        assert not await queue.lease("job:x", "w2", 300)  # (kept after the work: w1 lives)
        await asyncio.sleep(0.4)  # w1 gone: no renewal
        assert await queue.lease("job:x", "w2", 300)
    finally:
        await queue.aclose()


async def test_a_queue_redis_that_keeps_nothing_across_a_restart_is_told_apart(
    redis: RedisServer,
) -> None:
    """The worker warns at start about a queue Redis without persistence (a restart loses
    every batch, while the provider bills the jobs it was given): the test Redis has none, and
    with an append-only file it is durable."""
    queue = queue_for(redis, f"durable-{time.time_ns()}")
    try:
        assert await queue.durable() is False
        await queue.redis.config_set("appendonly", "yes")
        assert await queue.durable() is True
    finally:
        await queue.redis.config_set("appendonly", "no")
        await queue.aclose()


async def test_a_job_the_provider_made_for_a_worker_that_died_is_adopted_not_made_again(
    simulator: Simulator, redis: RedisServer, tmp_path: Path
) -> None:
    """The worker dies after the provider made its job and before recording it (here: the
    recording fails once). The job was billed and never polled, and its lines went to a second
    job (billed twice, and every tenant's prompts left at the provider in two files). Now the
    job's intent, recorded before the call, is adopted once its lease lapses: the provider's
    job carrying its marker is polled, and no second job is made."""
    before = sim_stats(simulator)
    config = provider_config(simulator, redis, tmp_path)
    worker, upstream, submits = provider_worker(config, redis, tmp_path, lease_seconds=0.5)
    adopt = worker.queue.adopt_intent
    died: list[str] = []

    async def dies_once(marker: str, job_id: str, *args: Any) -> str:
        if not died:
            died.append(job_id)
            raise RuntimeError("the worker died")
        return await adopt(marker, job_id, *args)

    worker.queue.adopt_intent = dies_once  # type: ignore[method-assign,assignment]
    record = await new_batch(config, redis, 4)
    try:
        done = await run_until_terminal(config, redis, worker, record)
    finally:
        await upstream.aclose()
    assert done.status == "completed" and done.request_counts.completed == 4
    after = sim_stats(simulator)
    assert len(submits) == 1 and len(died) == 1
    made = after.get("batches_created", 0) - before.get("batches_created", 0)
    assert made == 1  # adopted, not made again
    assert after.get("lines", 0) - before.get("lines", 0) == 4


async def test_an_intent_whose_worker_died_before_the_provider_made_the_job_is_retried(
    simulator: Simulator, redis: RedisServer, tmp_path: Path
) -> None:
    """The worker dies before the provider made the job (here: its submit dies once the
    lines are uploaded, and with it the worker's reader, as with the process): no job carries
    the intent's marker, so another worker retries its lines into a new job, once, and deletes
    the upload (every tenant's prompts, left at the provider before)."""
    before = sim_stats(simulator)
    config = provider_config(simulator, redis, tmp_path)
    dying, dying_upstream, _ = provider_worker(config, redis, tmp_path, lease_seconds=0.5)
    uploads: list[str] = []

    class Died(BaseException):
        pass

    async def dies(_: Any, __: str, jsonl: bytes, ___: str, marker: str) -> str:
        async with httpx.AsyncClient(base_url=simulator.url) as client:
            uploaded = await client.post(
                "/v1/files", files={"file": (upload_name(marker), jsonl)}, data={"purpose": "batch"}
            )
        uploads.append(uploaded.json()["id"])
        raise Died

    dying.batches.submit = dies  # type: ignore[method-assign,assignment]
    other, other_upstream, _ = provider_worker(config, redis, tmp_path, lease_seconds=0.5)
    other.options = dataclasses.replace(other.options, consumer="w2")
    record = await new_batch(config, redis, 3)
    queue = queue_of(config, redis)
    first = asyncio.create_task(dying.run())
    try:
        while not await queue.intents():  # the dying worker took the lines
            await asyncio.sleep(0.05)
        second = asyncio.create_task(other.run())
        done = await wait_for_status(queue, record.id, time.monotonic() + 60, "completed")
        assert done is not None and done.request_counts.completed == 3
    finally:
        for worker, task in ((dying, first), (other, locals().get("second"))):
            worker.stop()
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
            await worker.queue.aclose()
            await worker.batches.aclose()
        await dying_upstream.aclose()
        await other_upstream.aclose()
        await queue.aclose()
    after = sim_stats(simulator)
    assert after.get("batches_created", 0) - before.get("batches_created", 0) == 1
    assert after.get("lines", 0) - before.get("lines", 0) == 3
    assert len(uploads) == 1
    deadline = time.monotonic() + 10  # (deleted right after the lines were retried)
    while httpx.get(f"{simulator.url}/v1/files/{uploads[0]}").status_code != 404:
        assert time.monotonic() < deadline, "the dead worker's upload was left"
        time.sleep(0.1)


def test_ledger_lines_recorded_by_a_gateway_that_died_before_its_ack_count_once(
    simulator: Simulator, redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway writes finished batch lines to the shared ledger, then dies before it
    acknowledges them in the queue's stream (another Redis). Another gateway takes them over:
    it finds their marks in the shared ledger and does not record them again (it counted them
    twice: 3,006 requests for 3,000 in a probe)."""
    name = f"twice-{time.time_ns()}"
    client, keys = finished_lines(redis, name, 3)
    monkeypatch.setattr(batch_stage, "SYNC_MIN_IDLE_MS", 200)
    monkeypatch.setattr(batch_stage, "SYNC_RECLAIM_SECONDS", 0.3)
    shared = start_redis(tmp_path / "ledger")
    config = batch_config(simulator, redis, tmp_path, name)
    config["ledger"] = {"redisUrl": shared.url}
    try:
        with gateway(config) as first:
            stages = first.app.state.gateway.stages  # type: ignore[attr-defined]
            stage = next(s for s in stages if s.name == "batch")
            queue = stage.runtime.queue

            async def dies(*_: Any) -> int:
                raise RuntimeError("the gateway died before its ack")

            queue.redis.xack = dies  # (its lines stay pending under its name)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and admin_usage(first)["totals"]["requests"] < 3:
                time.sleep(0.05)
            assert admin_usage(first)["totals"]["requests"] == 3
            assert client.xpending(keys.ledger, keys.ledger_group)["pending"] == 3
        with gateway(config) as second:
            deadline = time.monotonic() + 10
            while (
                time.monotonic() < deadline
                and client.xpending(keys.ledger, keys.ledger_group)["pending"] > 0
            ):
                time.sleep(0.05)
            assert client.xpending(keys.ledger, keys.ledger_group)["pending"] == 0
            totals = admin_usage(second)["totals"]
            assert totals["requests"] == 3 and totals["cost_usd"] == pytest.approx(0.75)
    finally:
        shared.kill()
        client.close()


async def test_a_job_is_found_by_its_marker_behind_more_than_a_page_of_newer_jobs(
    tmp_path: Path,
) -> None:
    """The adopter looks for a dead worker's job by its marker: the provider has made more
    than a page of jobs since (a busy key), and only the newest 100 were searched."""
    with simulator_at(tmp_path) as sim:
        batches, submit = sim_batches(sim)
        target = Target("sim", "gpt-4o-mini")
        try:
            since = time.time()
            wanted = await submit("m-old")
            await asyncio.sleep(1.1)  # (the provider's created_at counts seconds)
            for i in range(120):
                await submit(f"m-{i}")
            assert await batches.find(target, "m-old", since) == str(wanted)
            assert await batches.find(target, "m-none", since) is None
        finally:
            await batches.aclose()


def sim_batches(sim: Simulator) -> tuple[OpenAIBatches, Callable[[str], Awaitable[str]]]:
    """Batches calls to `sim`, and a submit of a one-line job carrying a marker."""
    batches = OpenAIBatches([ProviderConfig(name="sim", base_url=f"{sim.url}/v1")], {"sim": None})
    target = Target("sim", "gpt-4o-mini")
    line = b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{}}\n'

    async def submit(marker: str) -> str:
        return await batches.submit(target, "/v1/chat/completions", line, "24h", marker)

    return batches, submit


async def test_a_jobs_upload_is_named_after_its_marker_and_found_by_it(tmp_path: Path) -> None:
    """What a worker that died between the upload and the create left at the provider is
    found by its marker (the upload's file name), behind other uploads."""
    with simulator_at(tmp_path) as sim:
        batches, submit = sim_batches(sim)
        target = Target("sim", "gpt-4o-mini")
        try:
            since = time.time()
            job = await submit("m-dead")
            for i in range(3):
                await submit(f"m-{i}")
            uploaded = await batches.find_upload(target, "m-dead", since)
            assert uploaded is not None
            assert uploaded == getattr(job, "input_file_id", None)
            meta = httpx.get(f"{sim.url}/v1/files/{uploaded}").json()
            assert meta["filename"] == upload_name("m-dead")
            assert await batches.find_upload(target, "m-none", since) is None
        finally:
            await batches.aclose()


async def test_a_worker_slow_to_create_its_job_keeps_it(redis: RedisServer, tmp_path: Path) -> None:
    """A create that takes longer than an intent may wait before others look at it (two
    leases) is the worker's own: its poller does not adopt or give it up (it did, and then
    cancelled the job, or made a second one)."""
    with simulator_at(tmp_path, "--batch-create-ms", "2500") as sim:
        before = sim_stats(sim)
        config = provider_config(sim, redis, tmp_path)
        worker, upstream, _ = provider_worker(config, redis, tmp_path, lease_seconds=0.5)
        record = await new_batch(config, redis, 3)
        try:
            done = await run_until_terminal(config, redis, worker, record)
        finally:
            await upstream.aclose()
        assert done.status == "completed" and done.request_counts.completed == 3
        after = sim_stats(sim)
        assert after.get("batches_created", 0) - before.get("batches_created", 0) == 1
        assert after.get("cancels", 0) == before.get("cancels", 0)
