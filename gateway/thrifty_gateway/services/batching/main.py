"""Running a batch worker process: open the queue, store and clients from the gateway config,
run until SIGTERM/SIGINT (lines in flight stay pending and are picked up again)."""

from __future__ import annotations

import asyncio
import logging
import signal

from thrifty_core.config import GatewayConfig

from ..upstream import HttpUpstream
from .files import FilesystemStore
from .linecache import ExactLineCache
from .provider import OpenAIBatches
from .stage import open_queue
from .worker import Worker, WorkerOptions

log = logging.getLogger(__name__)


async def run_worker(config: GatewayConfig, options: WorkerOptions) -> None:
    from ...app import provider_keys

    if config.batch is None:
        raise ValueError("the config has no `batch` section")
    queue = open_queue(config)
    if queue is None:
        raise ValueError("the batch worker needs Redis (config `batch.redisUrl`)")
    if not config.batch.files_dir:
        raise ValueError("the batch worker needs the shared file store (`batch.filesDir`)")
    keys = provider_keys(config)
    store = FilesystemStore(config.batch.files_dir, config.batch.spec.file_store.max_total_bytes)
    upstream = HttpUpstream(config.providers, keys)
    batches = OpenAIBatches(config.providers, keys)
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
    try:
        await worker.run()
    finally:
        await upstream.aclose()
        await batches.aclose()
        await queue.aclose()
        if cache is not None:
            await cache.aclose()
        log.info("batch worker %s stopped (%s)", options.consumer, worker.stats)
