"""Running a batch worker process: open the queue, store and clients from the gateway config,
run until SIGTERM/SIGINT (lines in flight stay pending and are picked up again)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from thrifty_core.config import GatewayConfig, ProviderConfig

from ..pipeline import Target
from ..upstream import KEY_RELOAD_SECONDS, HttpUpstream, ProviderKeys
from .files import FilesystemStore
from .linecache import ExactLineCache
from .provider import JobState, OpenAIBatches
from .stage import open_queue
from .worker import Worker, WorkerOptions

log = logging.getLogger(__name__)


class FollowingBatches:
    """`OpenAIBatches` that follows rotated provider keys: its clients are made again, with the
    current keys, when they changed (the replaced ones are closed at the end: calls may still
    be running on them)."""

    def __init__(self, providers: list[ProviderConfig], keys: ProviderKeys) -> None:
        self._providers = providers
        self._keys = keys
        self._version = keys.version
        self._current = OpenAIBatches(providers, keys.values)
        self._replaced: list[OpenAIBatches] = []

    def _client(self) -> OpenAIBatches:
        if self._keys.version != self._version:
            self._version = self._keys.version
            self._replaced.append(self._current)
            self._current = OpenAIBatches(self._providers, self._keys.values)
        return self._current

    async def submit(
        self, target: Target, url: str, jsonl: bytes, window: str, marker: str | None = None
    ) -> str:
        return await self._client().submit(target, url, jsonl, window, marker)

    async def find(self, target: Target, marker: str, since: float) -> str | None:
        return await self._client().find(target, marker, since)

    async def find_upload(self, target: Target, marker: str, since: float) -> str | None:
        return await self._client().find_upload(target, marker, since)

    async def state(self, target: Target, job_id: str) -> JobState:
        return await self._client().state(target, job_id)

    async def download(self, target: Target, file_id: str) -> bytes:
        return await self._client().download(target, file_id)

    async def cancel(self, target: Target, job_id: str) -> None:
        await self._client().cancel(target, job_id)

    async def delete(self, target: Target, file_id: str) -> None:
        await self._client().delete(target, file_id)

    async def aclose(self) -> None:
        for batches in (*self._replaced, self._current):
            await batches.aclose()


async def reload_provider_keys(upstream: HttpUpstream, interval: float) -> None:
    """Re-read the provider key files every `interval` seconds (the batch clients follow
    through `ProviderKeys.version`)."""
    while True:
        await asyncio.sleep(interval)
        try:
            upstream.reload_keys()
        except Exception:
            log.exception("provider keys could not be reloaded; retrying")


async def run_worker(config: GatewayConfig, options: WorkerOptions) -> None:
    if config.batch is None:
        raise ValueError("the config has no `batch` section")
    queue = open_queue(config)
    if queue is None:
        raise ValueError("the batch worker needs Redis (config `batch.redisUrl`)")
    if not config.batch.files_dir:
        raise ValueError("the batch worker needs the shared file store (`batch.filesDir`)")
    keys = ProviderKeys(config.providers)
    store = FilesystemStore(config.batch.files_dir, config.batch.spec.file_store.max_total_bytes)
    upstream = HttpUpstream(config.providers, keys)
    batches = FollowingBatches(config.providers, keys)
    cache = ExactLineCache.from_config(config)
    worker = Worker(config, queue, store, upstream, batches, options, cache)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    log.info(
        "batch worker %s started (queue %s, mode %s)",
        options.consumer,
        config.batch.name,
        config.batch.spec.mode,
    )
    reload = asyncio.create_task(reload_provider_keys(upstream, KEY_RELOAD_SECONDS))
    try:
        await worker.run()
    finally:
        reload.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reload
        await upstream.aclose()
        await batches.aclose()
        await queue.aclose()
        if cache is not None:
            await cache.aclose()
        log.info("batch worker %s stopped (%s)", options.consumer, worker.stats)
