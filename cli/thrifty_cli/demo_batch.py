"""The demo's batch stage: submit a small batch with the official `openai` client (files.create,
batches.create, batches.retrieve until done, files.content) and report the batch saving.

When the demo's gateway has no batch queue configured (the default demo config has no Redis),
the stage brings its own: a redis-server, a gateway with a `batch` section and one
`thrifty batch-worker`, all pointed at the demo's simulator, stopped when the stage ends.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Protocol

import yaml

from thrifty_cli.demo_support import free_port, stop
from thrifty_core.config import read_config_data

ROOT = Path(__file__).resolve().parents[2]
TENANT_KEY = "sk-local-a"
ADMIN_KEY = "sk-local-admin"
LINES = 50
MODEL = "gpt-4o"


class DemoLike(Protocol):
    gateway_url: str
    simulator_url: str
    notes: list[tuple[str, str]]
    ledgers: list[tuple[str, dict[str, Any]]]


def _ok(url: str, key: str | None = None) -> bool:
    request = urllib.request.Request(url)
    if key:
        request.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def _process(args: list[str], log: Path, ready: str | None) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while ready and not _ok(ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args[0]} did not start (log: {log})")
            time.sleep(0.1)
        yield
    finally:
        stop(proc)


def _own_stack(stack: ExitStack, simulator_url: str, work: Path) -> str:
    """redis-server + gateway (with a batch queue) + worker; returns the gateway URL."""
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise RuntimeError("redis-server is not installed (needed by the batch queue)")
    redis_port = free_port()
    stack.enter_context(
        _process(
            [redis_bin, "--port", str(redis_port), "--save", "", "--appendonly", "no"],
            work / "redis.log",
            None,
        )
    )
    time.sleep(0.3)
    port = free_port()
    config: dict[str, Any] = read_config_data(ROOT / "examples" / "local.yaml")
    config["providers"][0]["baseUrl"] = f"{simulator_url}/v1"
    config["server"] = {"host": "127.0.0.1", "port": port, "logLevel": "WARNING"}
    config["batch"] = {
        "name": "demo",
        "redisUrl": f"redis://127.0.0.1:{redis_port}/0",
        "filesDir": str(work / "files"),
        "spec": {"mode": "provider", "flushWindowSeconds": 1, "pollIntervalSeconds": 1},
    }
    path = work / "gateway-batch.yaml"
    path.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    stack.enter_context(
        _process(
            [sys.executable, "-m", "thrifty_gateway", "--config", str(path)],
            work / "gateway-batch.log",
            f"{url}/readyz",
        )
    )
    stack.enter_context(
        _process(
            [sys.executable, "-m", "thrifty_cli", "batch-worker", "--config", str(path)],
            work / "worker.log",
            None,
        )
    )
    return url


def _usage(url: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url}/v1/thrifty/usage", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        usage: dict[str, Any] = json.loads(resp.read())
    return usage


def _batch_saving(url: str) -> tuple[float, float]:
    totals = _usage(url)["totals"]
    return float(totals["saved_by_lever_usd"]["batch"]), float(totals["cost_usd"])


def submit_batch(gateway_url: str, lines: int = LINES, timeout: float = 120) -> dict[str, Any]:
    """The client side of the Batch API through the gateway; returns what the report shows."""
    import openai

    items = [
        {
            "custom_id": f"summary-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "Summarise the ticket in one sentence."},
                    {"role": "user", "content": f"Ticket {i}: the invoice total looks wrong."},
                ],
            },
        }
        for i in range(lines)
    ]
    data = "\n".join(json.dumps(i) for i in items).encode() + b"\n"
    saved_before, _ = _batch_saving(gateway_url)
    started = time.monotonic()
    with openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=TENANT_KEY, max_retries=2) as client:
        uploaded = client.files.create(file=("tickets.jsonl", data), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"batch {batch.id} still {batch.status}")
            time.sleep(0.5)
            batch = client.batches.retrieve(batch.id)
        output = client.files.content(batch.output_file_id).text if batch.output_file_id else ""
    answered = sum(1 for line in output.splitlines() if line.strip())
    saved = 0.0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        saved, _ = _batch_saving(gateway_url)
        if saved > saved_before:
            break
        time.sleep(0.2)
    return {
        "status": batch.status,
        "lines": lines,
        "answered": answered,
        "seconds": round(time.monotonic() - started, 1),
        "saved_usd": saved - saved_before,
    }


class BatchDemoStage:
    """Demo stage: a batch of ticket summaries through the provider Batch API (half price)."""

    name = "batch"

    async def run(self, demo: DemoLike) -> None:
        result = await asyncio.to_thread(self._run, demo)
        demo.notes.append(
            (
                self.name,
                f"{result['answered']}/{result['lines']} lines of a batch {result['status']} in "
                f"{result['seconds']}s through the provider Batch API; saved "
                f"${result['saved_usd']:.4f} (batch price is half the list price)",
            )
        )

    def _run(self, demo: DemoLike) -> dict[str, Any]:
        if _ok(f"{demo.gateway_url}/v1/batches", TENANT_KEY):
            return submit_batch(demo.gateway_url)  # in the demo gateway's own ledger
        with ExitStack() as stack:
            work = Path(tempfile.mkdtemp(prefix="thrifty-demo-batch-"))
            url = _own_stack(stack, demo.simulator_url, work)
            result = submit_batch(url)
            demo.ledgers.append((self.name, _usage(url)))
            return result


def batch_stage() -> BatchDemoStage:
    """The stage the demo appends to its list."""
    return BatchDemoStage()
