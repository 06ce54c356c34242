"""The batch worker (`thrifty batch-worker`): reads lines from the queue and runs them in the
`BatchQueue`'s mode, polls provider jobs, reclaims crashed workers' lines, finalizes batches.

Three loops share one `Worker`: the reader (new lines, then packs or direct calls), the poller
(provider jobs, with backoff, any worker may poll any job under a short lease) and the sweeper
(`XAUTOCLAIM` of idle lines, finalization of batches whose lines are all done).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple

from thrifty_core.config import BatchConfig, GatewayConfig

from ...state import RouteRuntime, build_catalog, build_routes
from ..upstream import UpstreamClient
from .direct import DirectExecutor, LineCache, cached, success
from .files import FileStore
from .finalize import fail_interrupted, finalize
from .model import WINDOW_SECONDS, Line, Result
from .provider import (
    QUOTA_CODES,
    TERMINAL_JOB,
    JobState,
    Pack,
    Packer,
    ProviderBatches,
    job_lost,
    next_poll,
    parse_outputs,
    poll_error_is_gone,
    retry_delay,
)
from .queue import Entry, PendingDelete, RedisQueue, intent_job

if TYPE_CHECKING:
    from ..pipeline import Target

log = logging.getLogger(__name__)
RECLAIM_BATCH = 500  # lines taken over per reclaim, at most
VALIDATING_RECHECK = 1.0  # seconds before a line of a batch still being created is looked at
# Batch statuses whose remaining lines are not run (answered with their status as the error).
STOPPED = frozenset({"cancelling", "cancelled", "expired", "failed"})
EXPIRED = "This request could not be executed before the completion window expired."


@dataclass(frozen=True)
class WorkerOptions:
    consumer: str
    reclaim_idle_seconds: float = 120.0
    sweep_seconds: float = 1.0
    read_block_ms: int = 500
    # a provider job whose polls fail this many times in a row, the last saying it is gone
    # (404/401/403), is given up and its lines retried per the policy
    job_lost_after_failures: int = 5
    # a provider job is given up this long after its completion window, whatever its polls say
    job_grace_seconds: float = 3600.0
    # a batch still `validating` this long after it was created (creation cut short) is failed
    stale_validating_seconds: float = 600.0
    # A provider job's poll lease and a job creation's: renewed while the work runs
    # (`RedisQueue.holding`), so a worker that dies holds its jobs up this long at most.
    lease_seconds: float = 30.0
    # a line whose provider job failed as a whole, or could not be submitted, is retried
    # after this many seconds, doubling per attempt up to the max (the BatchQueue's
    # `retries.backoffSeconds` / `maxBackoffSeconds`, `worker_options`)
    retry_backoff_seconds: float = 30.0
    retry_backoff_max_seconds: float = 900.0
    # a job refused for the provider's enqueued-token quota (`token_limit_exceeded`): its lines
    # wait this long, doubling per refusal up to the max, without an attempt counted (until the
    # batch's completion window ends: they are then answered `batch_expired`)
    quota_backoff_seconds: float = 60.0
    quota_backoff_max_seconds: float = 1800.0
    # at most this many lines backing off are held in memory (about 2.4 KB each): new lines
    # are read while fewer than this less the reclaim headroom are (the rest wait in the
    # stream), so that a dead worker's lines can always be reclaimed into the headroom
    max_delayed_lines: int = 10_000
    # provider files whose delete failed are tried again after this many seconds, doubling
    # per failed try up to the max, and given up (left at the provider, with one log line)
    # this long after they were recorded, or at once when the provider refuses (403), does
    # not know them (404) or is no longer configured. A pass of the deleter (its own loop,
    # every `file_delete_retry_seconds`) tries at most `file_deletes_per_pass` files and
    # starts none after `file_delete_pass_seconds`; one delete is cut after its timeout.
    file_delete_retry_seconds: float = 60.0
    file_delete_retry_max_seconds: float = 3600.0
    file_delete_give_up_seconds: float = 86400.0
    file_delete_timeout_seconds: float = 20.0
    file_deletes_per_pass: int = 100
    file_delete_pass_seconds: float = 30.0
    # the lines of provider jobs no longer recorded (left behind by an older worker's drop
    # while old and new workers ran side by side) are looked for and removed this often
    orphans_seconds: float = 600.0


def worker_options(
    batch: BatchConfig,
    consumer: str,
    reclaim_idle_seconds: float | None = None,
    sweep_seconds: float = 1.0,
) -> WorkerOptions:
    """The options a worker of `batch` runs with: its queue's spec (retry backoff) and the
    command line (consumer name, reclaim idle time: by default twice the flush window, at
    least a minute)."""
    spec = batch.spec
    idle = reclaim_idle_seconds
    if idle is None:
        idle = max(60.0, 2.0 * spec.flush_window_seconds)
    return WorkerOptions(
        consumer=consumer,
        reclaim_idle_seconds=idle,
        sweep_seconds=sweep_seconds,
        retry_backoff_seconds=float(spec.retries.backoff_seconds),
        retry_backoff_max_seconds=float(spec.retries.max_backoff_seconds),
    )


class BatchInfo(NamedTuple):
    status: str
    total: int
    expires_at: int | None


def stopped(line: Line, info: BatchInfo | None) -> Result:
    """The error a line of a stopped (or vanished) batch is answered with, unrun."""
    status = "missing" if info is None else info[0]
    status = "cancelled" if status == "cancelling" else status
    return Result(line.custom_id, None, None, f"batch_{status}", f"the batch is {status}")


@dataclass
class WorkerStats:
    lines: int = 0
    jobs_submitted: int = 0
    polls: int = 0
    direct_calls: int = 0
    resubmitted: int = 0
    jobs_lost: int = 0
    reclaimed: int = 0
    cache_hits: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Worker:
    def __init__(
        self,
        config: GatewayConfig,
        queue: RedisQueue,
        store: FileStore,
        upstream: UpstreamClient,
        batches: ProviderBatches,
        options: WorkerOptions,
        cache: LineCache | None = None,
    ) -> None:
        assert config.batch is not None
        self.batch: BatchConfig = config.batch
        self.spec = self.batch.spec
        self.queue = queue
        self.store = store
        self.batches = batches
        self.options = options
        self.cache = cache
        self.routes: dict[str, RouteRuntime] = build_routes(config)
        self.catalog = build_catalog(config)
        self.providers = {p.name: p for p in config.providers}
        self.direct = DirectExecutor(upstream, self.routes, self.catalog, self.spec.direct)
        limits = self.spec.limits
        self.packer = Packer(
            limits.max_lines_per_job, limits.max_bytes_per_job, self.spec.flush_window_seconds
        )
        self.stats = WorkerStats()
        self._info: dict[str, tuple[BatchInfo, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_poll: dict[str, float] = {}
        self._held: set[str] = set()  # entries in a pack or a direct call of this worker
        # lines backing off (not before their time): (due, entry id, line), held by this worker
        self._delayed: list[tuple[float, str, Line]] = []
        self._lease_ms = int(options.lease_seconds * 1000)
        self._submitting: set[str] = set()  # markers of the jobs this worker is creating
        self._stop = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        await self.queue.ensure_groups()
        if await self.queue.durable() is False:
            log.warning(
                "the batch queue's Redis keeps nothing across a restart (no append-only file, "
                "no snapshots): a restart loses every batch in it, while the provider still "
                "runs and bills the jobs already submitted; turn on appendonly"
            )
        for entry_id, line in await self.queue.read_own(self.options.consumer):
            await self._handle(entry_id, line)
        loops = [
            asyncio.create_task(self._reader(), name="batch-reader"),
            asyncio.create_task(self._poller(), name="batch-poller"),
            asyncio.create_task(self._sweeper(), name="batch-sweeper"),
            asyncio.create_task(self._heartbeat(), name="batch-heartbeat"),
            asyncio.create_task(self._deleter(), name="batch-file-deleter"),
        ]
        try:
            await self._stop.wait()
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("batch task failed", exc_info=task.exception())

    # -- reading ----------------------------------------------------------------------------

    async def _reader(self) -> None:
        while not self._stop.is_set():
            try:
                room = max(1, self.spec.direct.concurrency * 4 - len(self._tasks))
                if self.spec.mode == "provider":
                    room = max(room, self.spec.limits.max_lines_per_job)
                wait = self.packer.next_due(time.monotonic())
                if self._delayed:
                    due = max(0.0, self._delayed[0][0] - time.time())
                    wait = due if wait is None else min(wait, due)
                block = self.options.read_block_ms
                if wait is not None:
                    block = max(1, min(block, int(wait * 1000) + 1))
                free = self.options.max_delayed_lines - self._reclaim_headroom()
                free -= len(self._delayed)
                entries: list[Entry] = []
                if len(self._tasks) >= self.spec.direct.concurrency * 4:
                    await asyncio.sleep(0.01)
                elif free <= 0:
                    # as many lines backing off as may be held: the rest stay in the stream
                    # (read once some of these have woken and gone on)
                    await asyncio.sleep(block / 1000)
                else:
                    room = min(room, free)
                    entries = await self.queue.read(self.options.consumer, room, block)
                for entry_id, line in entries:
                    await self._handle(entry_id, line)
                while self._delayed and self._delayed[0][0] <= time.time():
                    _, entry_id, line = heapq.heappop(self._delayed)
                    self._held.discard(entry_id)
                    await self._handle(entry_id, line)
                for pack in self.packer.due(time.monotonic()):
                    await self._submit(pack)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch reader error; retrying")
                await asyncio.sleep(1.0)

    async def _batch_info(self, batch_id: str) -> BatchInfo | None:
        """(status, total lines, expires_at) of a batch, cached for a second. A batch still
        `validating` long after it was created (its creation was cut short) is failed here,
        before any of its lines runs."""
        now = time.monotonic()
        hit = self._info.get(batch_id)
        if hit is not None and now - hit[1] < 1.0:
            return hit[0]
        record = await self.queue.get(batch_id)
        if record is None:
            return None
        if (
            record.status == "validating"
            and time.time() - record.created_at >= self.options.stale_validating_seconds
        ):
            await fail_interrupted(self.queue, record)
            record = await self.queue.get(batch_id)
            if record is None:
                return None
        info = BatchInfo(record.status, record.request_counts.total, record.expires_at)
        self._info[batch_id] = (info, now)
        if len(self._info) > 10_000:
            self._info.clear()
        return info

    async def _handle(self, entry_id: str, line: Line) -> None:
        self.stats.lines += 1
        info = await self._batch_info(line.batch_id)
        if info is not None and info[0] == "validating":
            # Still being created (the rest of its lines are on their way): held here and
            # handled again in a moment (not left to a reclaim, which would count deliveries
            # and wait its idle time). Run now, its answers would be lost (and paid for) if the
            # create is cut short and the batch failed. Held with the lines backing off, not
            # as a task each: a creation cut short left a thousand such tasks, over the gate
            # that stops reading, and every tenant's lines waited behind them until the batch
            # was failed as stale (ten minutes).
            self._held.add(entry_id)
            heapq.heappush(self._delayed, (time.time() + VALIDATING_RECHECK, entry_id, line))
            return
        if info is not None and info[0] in ("finalizing", "completed"):
            # A copy of a line that has its result (every line has one, or the batch would not
            # be there): acknowledged, never run again (the stored result is kept).
            result = Result(line.custom_id, None, None, "duplicate", "the line has a result")
            await self._store(entry_id, line, result)
            return
        if await self._if_stopped(entry_id, line, info):
            return
        assert info is not None
        if info[2] is not None and time.time() > info[2]:
            result = Result(line.custom_id, None, None, "batch_expired", EXPIRED)
            await self._store(entry_id, line, result)
            return
        if line.not_before is not None and line.not_before > time.time():
            # Backing off: held here (its idle time refreshed, like any line held) until its
            # time, or until its batch's window ends (it is then answered batch_expired).
            due = line.not_before if info[2] is None else min(line.not_before, info[2] + 1.0)
            self._held.add(entry_id)
            heapq.heappush(self._delayed, (due, entry_id, line))
            return
        route = self.routes.get(line.route)
        if route is None:
            result = Result(line.custom_id, None, None, "model_not_found", "unknown model")
            await self._store(entry_id, line, result)
            return
        if self.cache is not None:
            hit, fence = await self.cache.get(line)
            if hit is not None:
                self.stats.cache_hits += 1
                await self._store(entry_id, line, cached(line, hit, self.catalog, route))
                return
            line = line.fenced(fence)
        target = route.targets[0]
        provider = self.providers[target.provider]
        self._held.add(entry_id)
        if self.spec.mode == "provider" and provider.supports_batch and not line.direct:
            for pack in self.packer.add(entry_id, line, target, time.monotonic()):
                await self._submit(pack)
        else:
            self._spawn(self._run_direct(entry_id, line))

    async def _if_stopped(self, entry_id: str, line: Line, info: BatchInfo | None) -> bool:
        """Answer the line, unrun, when its batch stopped (or vanished); True when it did."""
        if info is not None and info[0] not in STOPPED:
            return False
        await self._store(entry_id, line, stopped(line, info))
        return True

    async def _store(self, entry_id: str, line: Line, result: Result) -> None:
        done = await self.queue.complete(entry_id, line, result)
        await self._maybe_finalize(line.batch_id, done)

    async def _maybe_finalize(self, batch_id: str, done: int) -> None:
        info = await self._batch_info(batch_id)
        if info is not None and done >= info[1]:
            await finalize(self.queue, self.store, batch_id, self.options.consumer)

    # -- direct -----------------------------------------------------------------------------

    async def _run_direct(self, entry_id: str, line: Line) -> None:
        self._held.add(entry_id)
        try:
            await self._direct_once(entry_id, line)
        finally:
            self._held.discard(entry_id)

    async def _direct_once(self, entry_id: str, line: Line) -> None:
        stopped_as: list[Result] = []

        async def go() -> Result | None:
            # Right before the call (after waiting for a turn, maybe long): a line of a batch
            # cancelled (or expired) meanwhile is answered so, not run and paid for.
            info = await self._batch_info(line.batch_id)
            if info is None or info[0] in STOPPED:
                stopped_as.append(stopped(line, info))
            elif info[2] is not None and time.time() > info[2]:
                stopped_as.append(Result(line.custom_id, None, None, "batch_expired", EXPIRED))
            else:
                self.stats.direct_calls += 1
                return None
            return stopped_as[0]

        result, retryable = await self.direct.run(line, go)
        if stopped_as:
            await self._store(entry_id, line, stopped_as[0])
            return
        if result.ok:
            # a fallback target's answer must not fill the cache under the primary's key
            if self.cache is not None and result.body is not None and result.primary:
                await self.cache.put(line, result.body)
            await self._store(entry_id, line, result)
            return
        done = await self.queue.fail_or_retry(entry_id, line, result, retryable)
        if done is None:
            self.stats.resubmitted += 1
        else:
            await self._maybe_finalize(line.batch_id, done)

    # -- provider jobs ----------------------------------------------------------------------

    async def _whole(self, coro: Any) -> None:
        """Await `coro`, which runs to its end even if the caller is cancelled (the reader and
        poller loops are, at stop): `run` waits for it with the other tasks. A submit cut
        between the provider creating the job and `save_job` recording it leaves a job that
        is billed, never polled, and whose lines are submitted again; a poll cut half-way
        resubmits lines twice."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    async def _submit(self, pack: Pack) -> None:
        await self._whole(self._submit_held(pack))

    async def _submit_held(self, pack: Pack) -> None:
        try:
            await self._submit_once(pack)
        finally:
            self._held.difference_update(eid for eid, _ in pack.entries)

    async def _submit_once(self, pack: Pack) -> None:
        # Lines whose batch was cancelled (or ended) while they waited in the packer: answered
        # with that status, not submitted (and paid for).
        kept = [
            (entry_id, line)
            for entry_id, line in pack.entries
            if not await self._if_stopped(entry_id, line, await self._batch_info(line.batch_id))
        ]
        if len(kept) < len(pack.entries):
            if not kept:
                return
            pack = pack.only(kept)
        job = {
            "provider": pack.target.provider,
            "model": pack.target.model,
            "url": pack.url,
            "started": time.time(),
            "batches": sorted({line.batch_id for _, line in pack.entries}),
            "lines": {eid: line.to_json() for eid, line in pack.entries},
        }
        marker = uuid.uuid4().hex
        entry_ids = [eid for eid, _ in pack.entries]
        # Recorded before the provider is called, and kept leased while the call runs: a
        # worker that dies once the provider made the job leaves it to be adopted (`_adopt`),
        # not billed twice.
        lease = intent_job(marker)
        await self.queue.lease(lease, self.options.consumer, self._lease_ms)
        self._submitting.add(marker)  # (this worker's poller leaves it alone, however long)
        try:
            await self.queue.save_intent(marker, job, entry_ids)
            async with self.queue.holding(lease, self.options.consumer, self._lease_ms):
                await self._create_job(pack, marker, job, entry_ids)
        finally:
            self._submitting.discard(marker)
        await self.queue.release(lease, self.options.consumer)

    async def _create_job(
        self, pack: Pack, marker: str, job: dict[str, Any], entry_ids: list[str]
    ) -> None:
        try:
            job_id = await self.batches.submit(
                pack.target, pack.url, pack.jsonl(), self.spec.completion_window, marker
            )
        except Exception as exc:
            if not await self.queue.drop_intent(marker):
                # Taken meanwhile by a worker that found the job (this one's lease lapsed and
                # the create went through after all): its lines are that job's now.
                log.warning("provider batch submit failed (%s) after its job was adopted",
                            type(exc).__name__)  # fmt: skip
                return
            log.warning("provider batch submit failed (%s); lines retried", type(exc).__name__)
            # The submit deleted its upload; if that failed too, the upload is left (every
            # tenant's prompts): looked up by its marker and recorded for the deleter.
            await self._drop_upload(pack.target, marker, float(job["started"]))
            # The provider's own words stay out of the tenants' error files: a pack mixes
            # tenants, and a refusal of the gateway's key quotes it (masked, but the gateway's).
            status = getattr(exc, "status_code", None)
            message = "the provider did not accept the batch job" + (
                f" (HTTP {status})" if isinstance(status, int) else f" ({type(exc).__name__})"
            )
            for entry_id, line in pack.entries:
                result = Result(line.custom_id, None, None, "submit_failed", message)
                done = await self.queue.fail_or_retry(
                    entry_id, line, result, True, not_before=self._backoff(line)
                )
                if done is not None:
                    await self._maybe_finalize(line.batch_id, done)
            return
        meta = {k: v for k, v in job.items() if k != "lines"}
        meta["input_file_id"] = getattr(job_id, "input_file_id", None)
        job_id = str(job_id)
        adopted = await self.queue.adopt_intent(marker, job_id, meta, entry_ids)
        if adopted == "taken":
            return  # another worker found this job and recorded it (this one's lease lapsed)
        if adopted == "given_up":
            # Given up by another worker meanwhile (this one's lease lapsed: Redis failing):
            # its lines are retried there, so this job would run them twice. Recorded without
            # lines to be cancelled (again at each poll until it is) and its files deleted.
            log.warning("provider batch job %s made after its intent was given up", job_id)
            orphan = {**meta, "orphan": True}
            await self.queue.save_job(job_id, orphan, [])
            await self._cancel_job(pack.target, job_id, orphan)
            return
        self.stats.jobs_submitted += 1
        log.info("provider batch job %s submitted with %d lines", job_id, len(pack.entries))

    async def _adopt(self, marker: str, intent: dict[str, Any]) -> None:
        """An intent whose worker stopped renewing its lease (it died, or lost Redis) while
        creating the job: the provider's job carrying its marker is recorded as the job, or,
        when the provider made none, its lines are retried."""
        from ..pipeline import Target

        target = Target(intent["provider"], intent["model"])
        lease = intent_job(marker)
        async with self.queue.holding(lease, self.options.consumer, self._lease_ms):
            found = await self.batches.find(target, marker, float(intent["started"]))
            lines = await self.queue.intent_lines(marker)
            if found is not None:
                if await self.queue.adopt_intent(marker, found, intent, list(lines)) == "adopted":
                    log.warning("provider batch job %s adopted: its worker stopped", found)
                return
            # Given up first, then retried: a worker that adopts it meanwhile keeps its lines.
            if not await self.queue.drop_intent(marker):
                return
            reason = "the worker creating the provider job stopped before the provider made it"
            for entry_id, data in lines.items():
                line = Line.from_json(data)
                result = Result(line.custom_id, None, None, "submit_interrupted", reason)
                await self._retry(entry_id, line, result, True)
            log.warning("batch job intent %s given up: %s", marker, reason)
            # Its upload (every tenant's prompts), if it went through, is of no job's now.
            await self._drop_upload(target, marker, float(intent["started"]))

    async def _drop_upload(self, target: Target, marker: str, started: float) -> None:
        """Delete the upload of a job that was never made, if the provider has one (best
        effort, as every provider file delete: a delete that fails is recorded and retried)."""
        try:
            upload = await self.batches.find_upload(target, marker, started)
        except Exception as exc:
            log.warning("the upload of batch job %s not looked up: %s", marker,
                        type(exc).__name__)  # fmt: skip
            return
        if upload is not None:
            await self.queue.to_delete(target.provider, [upload])
            await self._delete_files(target.provider, [upload])

    async def _poller(self) -> None:
        interval = float(self.spec.poll_interval_seconds)
        while not self._stop.is_set():
            try:
                for job_id, job in (await self.queue.jobs()).items():
                    now = time.time()
                    if now < self._next_poll.get(job_id, 0.0):
                        continue
                    self._next_poll[job_id] = now + next_poll(interval, job["started"], now)
                    lease = f"job:{job_id}"
                    if await self.queue.lease(lease, self.options.consumer, self._lease_ms):
                        await self._whole(self._poll_leased(lease, job_id, job))
                for marker, intent in (await self.queue.intents()).items():
                    # (left to its worker while it renews the lease: it may be creating it)
                    if marker in self._submitting:
                        continue
                    if time.time() - float(intent["started"]) < 2 * self._lease_ms / 1000:
                        continue
                    if await self.queue.lease(
                        intent_job(marker), self.options.consumer, self._lease_ms
                    ):
                        try:
                            await self._whole(self._adopt(marker, intent))
                        except Exception as exc:  # tried again next pass; the others go on
                            log.warning("batch job intent %s not adopted: %s", marker,
                                        type(exc).__name__)  # fmt: skip
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch poller error; retrying")
            await asyncio.sleep(min(interval, 0.5))

    async def _poll_leased(self, lease: str, job_id: str, job: dict[str, Any]) -> None:
        """A poll, its job's lease renewed while it runs (and kept after it: only this worker
        polls the job while it lives)."""
        async with self.queue.holding(lease, self.options.consumer, self._lease_ms):
            await self._poll_guarded(job_id, job)

    def _backoff(self, line: Line, quota: bool = False) -> float:
        """When the line's next try may run, after its provider job failed as a whole (or
        could not be submitted): exponential per attempt, or per quota refusal."""
        o = self.options
        if quota:
            delay = retry_delay(
                line.waits + 1, o.quota_backoff_seconds, o.quota_backoff_max_seconds
            )
        else:
            delay = retry_delay(line.attempt, o.retry_backoff_seconds, o.retry_backoff_max_seconds)
        return time.time() + delay

    def _job_failed(
        self, state: JobState, index: int, line: Line
    ) -> tuple[Result, bool, float | None, bool]:
        """A line of a job the provider failed as a whole (no output): its result, whether it
        is retried, not before when, and whether that counts as an attempt. An error about the
        line itself fails it; the others' lines are retried at once, uncounted (the job failed
        for another line); a job-wide error backs off (a quota, uncounted)."""
        own = state.line_errors().get(index)
        if own is not None:
            return Result(line.custom_id, None, None, own.code, own.message), False, None, True
        job_wide = state.job_errors()
        if not job_wide and state.errors:
            message = "the provider failed the job for other lines; queued again"
            result = Result(line.custom_id, None, None, "provider_job_failed", message)
            return result, True, None, False
        error = job_wide[0] if job_wide else None
        code = error.code if error is not None else "provider_job_failed"
        message = f"provider job failed: {error.message if error else 'no reason given'}"
        quota = code in QUOTA_CODES
        result = Result(line.custom_id, None, None, code, message)
        return result, True, self._backoff(line, quota), not quota

    def _job_lost(self, job: dict[str, Any], failures: int, gone: bool) -> str | None:
        window = WINDOW_SECONDS.get(self.spec.completion_window, 86400)
        return job_lost(
            failures=failures,
            gone=gone,
            max_failures=self.options.job_lost_after_failures,
            started=float(job["started"]),
            deadline=window + self.options.job_grace_seconds,
            now=time.time(),
        )

    async def _poll_guarded(self, job_id: str, job: dict[str, Any]) -> None:
        """Poll one job; a job that keeps failing to poll, or outlives its window, is given
        up so that its lines do not wait forever."""
        try:
            await self._poll(job_id, job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures = await self.queue.job_poll_failed(job_id)
            gone = poll_error_is_gone(exc)
            log.warning(
                "polling provider job %s failed (%s, %d in a row)",
                job_id,
                type(exc).__name__,
                failures,
            )
            reason = self._job_lost(job, failures, gone)
            if reason is not None:
                await self._abandon(job_id, job, reason)

    async def _abandon(
        self, job_id: str, job: dict[str, Any], reason: str, state: JobState | None = None
    ) -> None:
        """Give up on a provider job: its lines are retried (or dead-lettered) per the policy,
        and its files at the provider (the input recorded at submit, the others when its last
        poll named them) are deleted like a finished job's."""
        self.stats.jobs_lost += 1
        log.warning("provider job %s given up: %s", job_id, reason)
        for entry_id, data in (await self.queue.job_lines(job_id)).items():
            line = Line.from_json(data)
            result = Result(line.custom_id, None, None, "provider_job_lost", reason)
            await self._retry(entry_id, line, result, True)
        named = [job.get("input_file_id")]
        if state is not None:
            named += [state.input_file_id, state.output_file_id, state.error_file_id]
        files = list(dict.fromkeys(f for f in named if f))
        provider = str(job.get("provider", ""))
        await self.queue.drop_job(job_id, files, provider)
        self._next_poll.pop(job_id, None)
        await self._delete_files(provider, files)

    async def _poll(self, job_id: str, job: dict[str, Any]) -> None:
        from ..pipeline import Target

        target = Target(job["provider"], job["model"])
        if not job.get("cancel_sent") and (job.get("orphan") or await self._all_stopped(job)):
            await self._cancel_job(target, job_id, job)
        self.stats.polls += 1
        state = await self.batches.state(target, job_id)
        await self.queue.job_poll_ok(job_id)
        if state.status not in TERMINAL_JOB:
            reason = self._job_lost(job, 0, False)
            if reason is not None:
                await self._abandon(job_id, job, reason, state)
            return
        files = []
        for file_id in (state.output_file_id, state.error_file_id):
            if file_id:
                files.append(await self.batches.download(target, file_id))
        outcomes = parse_outputs(*files)
        if state.status == "failed":
            log.warning(
                "provider batch job %s failed: %s",
                job_id,
                "; ".join(
                    f"{e.code} (line {e.line}, param {e.param}): {e.message}" for e in state.errors
                )
                or "no reason given",
            )
        lines = await self.queue.job_lines(job_id)
        for index, (entry_id, data) in enumerate(lines.items(), start=1):
            line = Line.from_json(data)
            outcome = outcomes.get(entry_id)
            route = self.routes.get(line.route)
            if outcome is not None and outcome.ok and outcome.body is not None and route:
                primary = route.targets[0] == target
                result = success(
                    line,
                    outcome.body,
                    self.catalog,
                    route,
                    job["model"],
                    batch=True,
                    primary=primary,
                    provider=target.provider,
                )
                if self.cache is not None and primary:
                    await self.cache.put(line, outcome.body)
                await self._store(entry_id, line, result)
                continue
            # cancelled meanwhile: said so, not retried
            if await self._if_stopped(entry_id, line, await self._batch_info(line.batch_id)):
                continue
            not_before: float | None = None
            count = True
            if outcome is None and state.status == "failed":
                result, retryable, not_before, count = self._job_failed(state, index, line)
            elif outcome is None:
                code = "batch_expired" if state.status == "expired" else "missing_result"
                result = Result(line.custom_id, None, None, code, f"provider job {state.status}")
                retryable = True
            else:
                result = Result(
                    line.custom_id,
                    outcome.status_code,
                    outcome.body,
                    outcome.error_code,
                    outcome.error_message,
                )
                retryable = outcome.retryable
            await self._retry(entry_id, line, result, retryable, not_before=not_before, count=count)
        # Every line has its result stored (or is queued again): the job's files at the
        # provider (every tenant's prompts and answers) are deleted, best effort. Recorded
        # first, so that a delete that fails (or a worker that dies now) is tried again.
        provider_files = [
            f for f in (state.input_file_id, state.output_file_id, state.error_file_id) if f
        ]
        await self.queue.drop_job(job_id, provider_files, target.provider)
        self._next_poll.pop(job_id, None)
        log.info("provider batch job %s %s", job_id, state.status)
        await self._delete_files(target.provider, provider_files)

    async def _delete_files(self, provider: str, file_ids: list[str]) -> None:
        """Delete provider files (best effort): one that fails stays recorded and is tried
        again by the deleter."""
        now = time.time()
        for file_id in file_ids:
            await self._delete_one(PendingDelete(file_id, provider, now, 0, 0.0))

    async def _delete_one(self, pending: PendingDelete) -> None:
        """One try at deleting a recorded provider file, its timeout bounded: deleted (or gone
        already), given up, or its next try recorded with a backoff."""
        from ..pipeline import Target

        o = self.options
        file_id, provider = pending.file_id, pending.provider
        if provider not in self.providers:
            log.warning(
                "provider file %s not deleted: provider %s is no longer configured; given up",
                file_id,
                provider,
            )
            await self.queue.file_deleted(file_id)
            return
        try:
            await asyncio.wait_for(
                self.batches.delete(Target(provider, ""), file_id), o.file_delete_timeout_seconds
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            if status == 404:  # gone already
                await self.queue.file_deleted(file_id)
                return
            tries = pending.tries + 1
            if status == 403 or time.time() - pending.since >= o.file_delete_give_up_seconds:
                why = "the key may not delete files" if status == 403 else f"{tries} tries"
                log.warning(
                    "deleting provider file %s at %s given up (%s, %s); delete it by hand",
                    file_id,
                    provider,
                    type(exc).__name__,
                    why,
                )
                await self.queue.file_deleted(file_id)
                return
            delay = retry_delay(tries, o.file_delete_retry_seconds, o.file_delete_retry_max_seconds)
            log.warning(
                "deleting provider file %s failed (%s); tried again in %.0f s",
                file_id,
                type(exc).__name__,
                delay,
            )
            await self.queue.delete_failed(
                replace(pending, tries=tries, next_at=time.time() + delay)
            )
            return
        await self.queue.file_deleted(file_id)

    async def _retry_deletes(self) -> None:
        """One pass of the deleter: the recorded files whose next try is due, at most
        `file_deletes_per_pass` of them, none started after `file_delete_pass_seconds`."""
        o = self.options
        now = time.time()
        due = [p for p in await self.queue.pending_deletes() if p.next_at <= now]
        due.sort(key=lambda p: p.next_at)
        deadline = time.monotonic() + o.file_delete_pass_seconds
        for pending in due[: o.file_deletes_per_pass]:
            if time.monotonic() >= deadline or self._stop.is_set():
                break
            await self._delete_one(pending)

    async def _deleter(self) -> None:
        """Retries failed provider-file deletes in its own loop (a slow or refusing Files API
        holds up neither the heartbeat nor reclaims and finalization), and now and then
        removes the lines of jobs no longer recorded."""
        next_orphans = 0.0
        while not self._stop.is_set():
            try:
                await self._retry_deletes()
                if time.monotonic() >= next_orphans:
                    next_orphans = time.monotonic() + self.options.orphans_seconds
                    removed = await self.queue.orphaned_job_lines()
                    if removed:
                        log.info(
                            "removed the lines of %d provider jobs no longer recorded", removed
                        )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch file deleter error; retrying")
            await asyncio.sleep(self.options.file_delete_retry_seconds)

    async def _all_stopped(self, job: dict[str, Any]) -> bool:
        """Whether every batch with lines in the job was cancelled (or ended otherwise): the
        job's answers would be paid for and thrown away. A job shared with batches still
        running is not cancelled (their lines would go back to the end of the provider's
        queue, and one tenant's cancels could hold up every other's): the cancelled batch's
        lines already submitted run and are billed, as in-flight requests of an OpenAI batch
        cancel are, and its output file has their answers (it stays `cancelling` until then)."""
        batch_ids = set(job.get("batches", ()))
        for batch_id in batch_ids:
            info = await self._batch_info(batch_id)
            if info is not None and info[0] not in STOPPED:
                return False
        return bool(batch_ids)

    async def _cancel_job(self, target: Target, job_id: str, job: dict[str, Any]) -> None:
        """Cancel the provider job (it stops running lines; what it ran stays in its output,
        and the rest come back as cancelled), once."""
        try:
            await self.batches.cancel(target, job_id)
        except Exception as exc:  # tried again at the next poll
            log.warning("cancelling provider job %s failed: %s", job_id, type(exc).__name__)
            return
        job["cancel_sent"] = True
        await self.queue.save_job(job_id, job, [])
        log.info("provider batch job %s cancelled (its batches were)", job_id)

    async def _retry(
        self,
        entry_id: str,
        line: Line,
        result: Result,
        retryable: bool,
        *,
        not_before: float | None = None,
        count: bool = True,
    ) -> None:
        # Only a counted failure goes direct: a quota wait, or a rerun because the job failed
        # for another line, goes back to a provider job (after its wait), as without it.
        if (
            retryable
            and count
            and self.spec.retries.on_failure == "direct"
            and (line.attempt < self.queue.max_attempts)
        ):
            # Queued again, to be run directly by whichever worker reads it: not run here in
            # place, where the entry (no longer in a live job) was free for another worker's
            # reclaim to run a second time. Only once: a replayed poll queues nothing more.
            if await self.queue.resubmit(entry_id, line, direct=True):
                self.stats.resubmitted += 1
            return
        done = await self.queue.fail_or_retry(
            entry_id, line, result, retryable, not_before=not_before, count=count
        )
        if done is None:
            self.stats.resubmitted += 1
        else:
            await self._maybe_finalize(line.batch_id, done)

    # -- sweeping ---------------------------------------------------------------------------

    def _reclaim_headroom(self) -> int:
        """Lines backing off the reader leaves room for, for the sweeper's reclaims."""
        return min(RECLAIM_BATCH, self.options.max_delayed_lines // 2)

    async def _sweeper(self) -> None:
        idle_ms = int(self.options.reclaim_idle_seconds * 1000)
        next_reclaim = 0.0
        while not self._stop.is_set():
            try:
                # Reclaims at most twice per idle period: listing the idle lines walks every
                # line waiting in a provider job (tens of thousands), which no sweep changes.
                await self._answer_stopped_delayed()
                # Up to as many as may still be held: the reader leaves a headroom for them, so
                # a dead worker's lines are taken over even while this one holds all the lines
                # backing off it reads.
                room = min(RECLAIM_BATCH, self.options.max_delayed_lines - len(self._delayed))
                if time.monotonic() >= next_reclaim and room > 0:
                    next_reclaim = time.monotonic() + self.options.reclaim_idle_seconds / 2
                    reclaimed = await self.queue.reclaim(self.options.consumer, idle_ms, room)
                    self.stats.reclaimed += len(reclaimed)
                    for entry_id, line in reclaimed:
                        if entry_id not in self._held:
                            await self._handle(entry_id, line)
                for batch_id in await self.queue.active():
                    await finalize(
                        self.queue,
                        self.store,
                        batch_id,
                        self.options.consumer,
                        stale_validating_seconds=self.options.stale_validating_seconds,
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch sweeper error; retrying")
            await asyncio.sleep(self.options.sweep_seconds)

    async def _answer_stopped_delayed(self) -> None:
        """Lines backing off whose batch was cancelled (or expired, or vanished) meanwhile are
        answered so now, not when they wake (up to the whole backoff later)."""
        if not self._delayed:
            return
        ended: dict[str, bool] = {}  # batch id -> whether it expired (else stopped)
        now = time.time()
        for batch_id in {line.batch_id for _, _, line in self._delayed}:
            info = await self._batch_info(batch_id)
            if info is None or info[0] in STOPPED:
                ended[batch_id] = False
            elif info[2] is not None and now > info[2]:
                ended[batch_id] = True
        if not ended:
            return
        # taken out of the heap in one step (no await): the reader pops from it too
        gone = [d for d in self._delayed if d[2].batch_id in ended]
        self._delayed = [d for d in self._delayed if d[2].batch_id not in ended]
        heapq.heapify(self._delayed)
        for _, entry_id, line in gone:
            self._held.discard(entry_id)
            if ended[line.batch_id]:
                result = Result(line.custom_id, None, None, "batch_expired", EXPIRED)
            else:
                result = stopped(line, await self._batch_info(line.batch_id))
            await self._store(entry_id, line, result)

    async def _heartbeat(self) -> None:
        """The lines this worker holds (waiting for a direct call's turn, in the packer,
        backing off) are marked as just delivered well within the idle time, so that no
        reclaim, another worker's or this one's, runs them a second time or counts them as
        crashing deliveries. Its own loop: nothing slow (a sweep, provider calls) delays it."""
        period = self.options.reclaim_idle_seconds / 4
        while not self._stop.is_set():
            try:
                if self._held:
                    await self.queue.touch(self.options.consumer, list(self._held))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch heartbeat error; retrying")
            await asyncio.sleep(period)
