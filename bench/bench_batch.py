"""Batching benchmarks (`python -m bench batch`), against the simulator as separate processes.

1. A 10,000-line batch end to end through the official `openai` client, the gateway, a real
   redis-server, one `thrifty batch-worker` and the simulator: provider mode (the simulator's
   Batch API) and direct mode (32 concurrent chat calls):
   lines/s from create to completed, peak RSS (VmHWM) of gateway and worker, upstream calls
   made, lines lost or duplicated in the output file.
2. Embeddings coalescing: 64 concurrent single-input callers (wrk, closed loop), with the
   coalescer (window 5 ms) and without it: upstream calls per request and p50 latency; and one
   caller alone, where the window is pure added latency.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import yaml

from bench.procs import free_port, process
from thrifty_core.config import read_config_data

ROOT = Path(__file__).resolve().parents[1]
LINES = int(os.environ.get("THRIFTY_BENCH_BATCH_LINES", "10000"))
CALLERS = 64
SECONDS = 5.0
WINDOW_MS = 5.0
KEY = "sk-local-a"
EMBED = "text-embedding-3-small"


def _peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _config(sim_port: int, port: int, batch: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = read_config_data(ROOT / "examples" / "local.yaml")
    config["providers"][0]["baseUrl"] = f"http://127.0.0.1:{sim_port}/v1"
    config["server"] = {
        "host": "127.0.0.1",
        "port": port,
        "logLevel": "WARNING",
        "logFormat": "json",
        "maxRequestBytes": 64 * 1024 * 1024,
    }
    for tenant in config["tenants"]:
        tenant.pop("requestsPerMinute", None)
    config["batch"] = batch
    return config


def _simulator(stack: ExitStack, work: Path, *extra: str) -> int:
    port = free_port()
    stack.enter_context(
        process(
            [sys.executable, "-m", "thrifty_cli", "simulator", "--port", str(port), *extra],
            work / f"sim-{port}.log",
            f"http://127.0.0.1:{port}/healthz",
        )
    )
    return port


def _gateway(stack: ExitStack, work: Path, config: dict[str, Any]) -> tuple[str, int, Path]:
    port = config["server"]["port"]
    path = work / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    pid = stack.enter_context(
        process(
            [sys.executable, "-m", "thrifty_gateway", "--config", str(path)],
            work / f"gateway-{port}.log",
            f"http://127.0.0.1:{port}/readyz",
        )
    ).pid
    return f"http://127.0.0.1:{port}", pid, path


def batch_end_to_end(work: Path, mode: str = "provider") -> dict[str, Any]:
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise RuntimeError("redis-server is not installed")
    with ExitStack() as stack:
        redis_port = free_port()
        stack.enter_context(
            process(
                [redis_bin, "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                work / "redis.log",
            )
        )
        sim_port = _simulator(stack, work, "--batch-speedup", "50")
        batch = {
            "name": f"bench-{mode}",
            "redisUrl": f"redis://127.0.0.1:{redis_port}/0",
            "filesDir": str(work / f"files-{mode}"),
            "spec": {
                "mode": mode,
                "direct": {"concurrency": 32},
                "flushWindowSeconds": 1,
                "pollIntervalSeconds": 1,
                "limits": {"maxLinesPerBatch": 50_000, "maxLinesPerJob": 2_500},
            },
        }
        url, gw_pid, path = _gateway(stack, work, _config(sim_port, free_port(), batch))
        worker_pid = stack.enter_context(
            process(
                [sys.executable, "-m", "thrifty_cli", "batch-worker", "--config", str(path)],
                work / f"worker-{mode}.log",
            )
        ).pid
        items = [
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"Summarise ticket {i} briefly."}],
                },
            }
            for i in range(LINES)
        ]
        data = b"\n".join(orjson.dumps(i) for i in items) + b"\n"
        with openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120) as oc:
            uploaded = oc.files.create(file=("bench.jsonl", data), purpose="batch")
            started = time.perf_counter()
            created = oc.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )
            enqueued = time.perf_counter() - started
            while True:
                got = oc.batches.retrieve(created.id)
                if got.status in ("completed", "failed", "expired", "cancelled"):
                    break
                time.sleep(0.1)
            elapsed = time.perf_counter() - started
            out = oc.files.content(got.output_file_id).content if got.output_file_id else b""
        ids = [orjson.loads(raw)["custom_id"] for raw in out.splitlines() if raw.strip()]
        expected = {f"line-{i}" for i in range(LINES)}
        sim_stats = httpx.get(f"http://127.0.0.1:{sim_port}/sim/batches/stats").json()
        calls = {k: sim_stats.get(k, 0) for k in ("files_uploaded", "batches_created")}
        calls.update({k: sim_stats.get(k, 0) for k in ("retrieves", "downloads")})
        sync = httpx.get(f"http://127.0.0.1:{sim_port}/sim/stats").json()["requests"]
        calls["chat_completions"] = sum(sync.values())
        return {
            "mode": mode,
            "lines": LINES,
            "status": got.status,
            "enqueue_seconds": round(enqueued, 2),
            "end_to_end_seconds": round(elapsed, 2),
            "lines_per_second": round(LINES / elapsed, 1),
            "peak_rss_mib": {"gateway": _peak_mib(gw_pid), "worker": _peak_mib(worker_pid)},
            "upstream_calls": {**calls, "total": sum(calls.values())},
            "provider_lines_run": sim_stats.get("lines", 0),
            "lost": len(expected - set(ids)),
            "duplicated": len(ids) - len(set(ids)),
        }


def _embed_load(url: str, connections: int, seconds: float) -> dict[str, Any]:
    from bench.loadgen import load

    body = orjson.dumps({"model": EMBED, "input": "an invoice about cloud storage"})
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    return load(f"{url}/v1/embeddings", body, headers, connections, seconds)


def coalescing(work: Path) -> dict[str, Any]:
    """wrk (closed loop, 64 connections = 64 concurrent single-input callers) against a gateway
    without and with the coalescer; also one caller alone (where the window is pure cost)."""
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        sim_port = _simulator(stack, work)
        for label, window in (("direct", 0.0), ("coalesced", WINDOW_MS)):
            batch = {"name": f"c-{label}", "coalesceWindowMs": window}
            url, _, _ = _gateway(stack, work, _config(sim_port, free_port(), batch))
            _embed_load(url, CALLERS, 1)  # warm-up
            row: dict[str, Any] = {}
            for callers in (CALLERS, 1):
                before = httpx.get(f"http://127.0.0.1:{sim_port}/sim/stats").json()["requests"]
                run = _embed_load(url, callers, SECONDS)
                after = httpx.get(f"http://127.0.0.1:{sim_port}/sim/stats").json()["requests"]
                calls = after.get(EMBED, 0) - before.get(EMBED, 0)
                row[f"callers_{callers}"] = {
                    "requests": run["requests"],
                    "errors": run["errors"],
                    "upstream_calls": calls,
                    "rps": run["rps"],
                    "p50_ms": round(run["p50_ms"], 3),
                    "p99_ms": round(run["p99_ms"], 3),
                }
            results[label] = row
    direct, merged = (
        results["direct"][f"callers_{CALLERS}"],
        results["coalesced"][f"callers_{CALLERS}"],
    )
    ratio_direct = direct["upstream_calls"] / max(direct["requests"], 1)
    ratio_merged = merged["upstream_calls"] / max(merged["requests"], 1)
    alone_d, alone_m = results["direct"]["callers_1"], results["coalesced"]["callers_1"]
    return {
        "window_ms": WINDOW_MS,
        "seconds_per_run": SECONDS,
        **results,
        "call_reduction_x": round(ratio_direct / max(ratio_merged, 1e-9), 1),
        "added_p50_ms_64_callers": round(merged["p50_ms"] - direct["p50_ms"], 2),
        "added_p50_ms_1_caller": round(alone_m["p50_ms"] - alone_d["p50_ms"], 2),
    }


def main() -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="thrifty-bench-batch-"))
    return {
        "machine": f"{os.cpu_count()} cores",
        "batch_end_to_end": batch_end_to_end(work),
        "batch_end_to_end_direct": batch_end_to_end(work, "direct"),
        "embeddings_coalescing": coalescing(work),
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
