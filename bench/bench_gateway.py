"""Gateway overhead: added latency over calling the provider directly, throughput, memory.

Starts the simulator (answering instantly) and one gateway worker as separate processes on
loopback, then with wrk (or the asyncio fallback in bench/loadgen.py):

* latency at 1 connection, direct vs through the gateway, ROUNDS interleaved rounds; the
  added p50/p99 is the median over rounds of (gateway - direct);
* throughput through the gateway at 16 connections (requests/s, p50, p99, errors);
* gateway RSS at idle, after REQUESTS proxied requests and after twice that (growth check).

Run: `uv run --frozen --all-extras python -m bench gateway` (JSON on stdout). Environment:
THRIFTY_BENCH_SECONDS (per latency round, default 5), THRIFTY_BENCH_ROUNDS (3),
THRIFTY_BENCH_REQUESTS (100000).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench.loadgen import load
from bench.procs import free_port, process
from thrifty_core.config import read_config_data

ROOT = Path(__file__).resolve().parents[1]
SECONDS = float(os.environ.get("THRIFTY_BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("THRIFTY_BENCH_ROUNDS", "3"))
REQUESTS = int(os.environ.get("THRIFTY_BENCH_REQUESTS", "100000"))
BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a concise support assistant."},
            {"role": "user", "content": "How do I reset the password of my account?"},
        ],
        "max_tokens": 64,
        "temperature": 0,
    }
).encode()
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-local-a"}


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def _gateway_config(sim_port: int, port: int) -> dict[str, Any]:
    config: dict[str, Any] = read_config_data(ROOT / "examples" / "local.yaml")
    config["providers"][0]["baseUrl"] = f"http://127.0.0.1:{sim_port}/v1"
    config["server"] = {
        "host": "127.0.0.1",
        "port": port,
        "logLevel": "WARNING",
        "logFormat": "json",
        "workers": 1,
    }
    for tenant in config["tenants"]:
        tenant.pop("requestsPerMinute", None)
    # Every request is identical: measure the proxied (miss) path, not the cache.
    config.pop("cachePolicies", None)
    config.pop("defaultCachePolicy", None)
    return config


async def _client_cpu_us(url: str, kind: str, n: int = 3000) -> float:
    """Client CPU per sequential POST with aiohttp or httpx (the upstream client choice)."""
    import aiohttp
    import httpx

    start = time.process_time()
    if kind == "aiohttp":
        async with aiohttp.ClientSession() as session:
            for i in range(n + 200):
                if i == 200:
                    start = time.process_time()
                async with session.post(url, data=BODY, headers=HEADERS) as resp:
                    await resp.read()
    else:
        async with httpx.AsyncClient() as client:
            for i in range(n + 200):
                if i == 200:
                    start = time.process_time()
                (await client.post(url, content=BODY, headers=HEADERS)).read()
    return round((time.process_time() - start) / n * 1e6, 1)


def client_overhead(url: str) -> dict[str, float]:
    import uvloop

    return {
        f"{kind}_cpu_us_per_request": uvloop.run(_client_cpu_us(url, kind))
        for kind in ("aiohttp", "httpx")
    }


def _drive(url: str, total: int) -> dict[str, Any]:
    """At least `total` requests at 16 connections (in bounded chunks)."""
    done = 0
    errors = 0
    started = time.perf_counter()
    while done < total:
        result = load(url, BODY, HEADERS, 16, 10)
        done += result["requests"]
        errors += result["errors"]
    return {"requests": done, "errors": errors, "seconds": round(time.perf_counter() - started, 1)}


def main() -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="thrifty-bench-gw-"))
    sim_port, gw_port = free_port(), free_port()
    config_path = work / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(_gateway_config(sim_port, gw_port)))
    direct = f"http://127.0.0.1:{sim_port}/v1/chat/completions"
    proxied = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    sim_args = [sys.executable, "-m", "thrifty_cli", "simulator", "--port", str(sim_port)]
    gw_args = [sys.executable, "-m", "thrifty_gateway", "--config", str(config_path)]
    with (
        process(sim_args, work / "sim.log", f"http://127.0.0.1:{sim_port}/healthz", 30),
        process(gw_args, work / "gw.log", f"http://127.0.0.1:{gw_port}/readyz", 30) as gw,
    ):
        rss_start = _rss_mib(gw.pid)
        load(proxied, BODY, HEADERS, 4, 2)  # warm up pools and code paths
        load(direct, BODY, HEADERS, 4, 1)
        time.sleep(1)
        rss_idle = _rss_mib(gw.pid)
        rounds = []
        for _ in range(ROUNDS):
            d = load(direct, BODY, HEADERS, 1, SECONDS)
            g = load(proxied, BODY, HEADERS, 1, SECONDS)
            rounds.append({"direct": d, "gateway": g})
        added_p50 = statistics.median(
            r["gateway"]["p50_ms"] - r["direct"]["p50_ms"] for r in rounds
        )
        added_p99 = statistics.median(
            r["gateway"]["p99_ms"] - r["direct"]["p99_ms"] for r in rounds
        )
        throughput = load(proxied, BODY, HEADERS, 16, 10)
        direct16 = load(direct, BODY, HEADERS, 16, 5)
        first = _drive(proxied, REQUESTS)
        rss_after = _rss_mib(gw.pid)
        second = _drive(proxied, REQUESTS)
        rss_after2 = _rss_mib(gw.pid)
        clients = client_overhead(direct)
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, "
        f"{platform.python_implementation()} {platform.python_version()}",
        "workers": 1,
        "latency_1conn": {
            "added_p50_ms": round(added_p50, 3),
            "added_p99_ms": round(added_p99, 3),
            "rounds": rounds,
            "target": "added p50 <= 1 ms, p99 <= 3 ms",
        },
        "throughput_16conn": {**throughput, "direct": direct16, "target": ">= 1000 rps"},
        "upstream_client": clients,
        "memory": {
            "rss_start_mib": rss_start,
            "rss_idle_mib": rss_idle,
            "rss_after_mib": rss_after,
            "rss_after_2x_mib": rss_after2,
            "drive": [first, second],
        },
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
