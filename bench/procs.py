"""Processes for the benchmarks: a free loopback port, waiting for a URL, a logged subprocess."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from thrifty_cli.demo_support import free_port, stop, wait_ready

__all__ = ["free_port", "process", "wait_ok"]


def wait_ok(url: str, timeout: float = 60) -> None:
    """Until `url` answers 200; TimeoutError after `timeout` seconds."""
    wait_ready(url, None, timeout, interval=0.05)


@contextmanager
def process(
    args: list[str], log: Path, ready_url: str | None = None, timeout: float = 60
) -> Iterator[subprocess.Popen[bytes]]:
    """`args` with output in `log`, ready when `ready_url` answers (or after half a second);
    terminated (killed after 10 s) on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        if ready_url:
            wait_ok(ready_url, timeout)
        else:
            time.sleep(0.5)
        yield proc
    finally:
        stop(proc)
